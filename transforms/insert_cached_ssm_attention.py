"""insert_cached_ssm_attention: every canonical Mamba2 SSM becomes the backend's cached SSM over state slots.

Uses only the mixer-backend interface (autodeploy_cli.ops.mixer_interface); kernels come from the backend table.
The graph gains the sequence-info inputs, one metadata node shared by every cached mixer, and one state input per
layer (`ssm_state_<i>`: [num_slots, heads, head_dim, state_size]). Example (torch backend, one layer):

Before:
    %ssm = auto_deploy.torch_ssm(%x, %A, %B, %C, %D, %dt, %dt_bias, [0.0, inf], 128)
After:
    %input_ids, %position_ids, ..., %batch_info_host, %cu_seqlen_host, %input_pos, %slot_idx, %ssm_state_0
    %meta = auto_deploy.torch_mixer_prepare_metadata(%input_pos, %slot_idx)
    %ssm = auto_deploy.torch_cached_ssm(%x, %A, %B, %C, %D, %dt, %dt_bias, %batch_info_host, %cu_seqlen_host,
                                        %meta[0], %meta[1], %ssm_state_0, [0.0, inf], 128)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx

from autodeploy_cli.config.schema import BACKEND_CHOICES
from autodeploy_cli.graph.cached_mixer import insert_cached_mixers
from autodeploy_cli.graph.core import is_op
from autodeploy_cli.graph.inputs import bound_args, ensure_shapes
from autodeploy_cli.ops import load_ops
from autodeploy_cli.ops.backends import resolve
from autodeploy_cli.ops.mixer_interface import MixerNodeInfo, get_mixer_backend
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import register


@dataclass
class InsertCachedSsmOptions(TransformOptions):
    # auto: triton on a CUDA device, torch elsewhere | torch (plain torch, any device) | triton (GPU kernels)
    backend: str = "auto"
    choices: ClassVar[dict] = {"backend": BACKEND_CHOICES["ssm"]}


def _info(node: fx.Node, idx: int) -> MixerNodeInfo:
    a = bound_args(node)
    x, B = a["hidden_states"].meta["val"], a["B"].meta["val"]
    dims = {"heads": int(x.shape[2]), "head_dim": int(x.shape[3]), "groups": int(B.shape[2]),
            "state_size": int(B.shape[3])}
    return MixerNodeInfo(idx, x.dtype, dims, (list(a["time_step_limit"]), int(a["chunk_size"])))


@register("insert_cached_ssm_attention")
class InsertCachedSsmAttention(BaseTransform):
    options_cls = InsertCachedSsmOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        load_ops()
        nodes = [n for n in gm.graph.nodes if is_op(n, torch.ops.auto_deploy.torch_ssm)]
        if not nodes:
            return TransformInfo.untouched("no torch_ssm nodes")
        backend = get_mixer_backend("ssm", resolve("ssm", self.options.backend, ctx.device.type))
        ensure_shapes(gm, [bound_args(n)[k] for n in nodes for k in ("hidden_states", "B")])
        infos = [_info(n, i) for i, n in enumerate(nodes)]
        iface = ctx.cache_interface()
        insert_cached_mixers(gm, iface, backend, nodes, infos)
        ctx.use_cached_probe()
        spec = iface.state_specs["ssm_state_0"]
        return TransformInfo(num_matches=len(nodes), is_clean=False, has_valid_shapes=False,
                             note=f"backend {backend.name}, state {list(spec.slot_shape)} {str(spec.dtype)[6:]}")
