"""insert_cached_causal_conv: every canonical causal conv1d becomes the backend's cached conv over state slots.

Uses only the mixer-backend interface (autodeploy_cli.ops.mixer_interface). The graph gains the sequence-info inputs,
the shared mixer metadata node, and one state input per layer (`conv_state_<i>`: [num_slots, channels, kernel - 1],
the last inputs of each sequence). Example (torch backend):

Before:
    %xbc = auto_deploy.torch_causal_conv1d(%in, %conv1d_weight, %conv1d_bias, 'silu')
After:
    %meta = auto_deploy.torch_mixer_prepare_metadata(%input_pos, %slot_idx)
    %xbc = auto_deploy.torch_cached_causal_conv1d(%in, %conv1d_weight, %conv1d_bias, %batch_info_host,
                                                  %cu_seqlen_host, %meta[0], %meta[1], %conv_state_0, 'silu')
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
class InsertCachedCausalConvOptions(TransformOptions):
    # auto: triton on a CUDA device, torch elsewhere | torch (plain torch, any device) | triton (GPU kernels)
    backend: str = "auto"
    choices: ClassVar[dict] = {"backend": BACKEND_CHOICES["causal_conv"]}


def _info(node: fx.Node, idx: int) -> MixerNodeInfo:
    a = bound_args(node)
    x, w = a["input"].meta["val"], a["weight"].meta["val"]
    dims = {"channels": int(x.shape[-1]), "kernel": int(w.shape[-1])}
    return MixerNodeInfo(idx, x.dtype, dims, (a["activation"],))


@register("insert_cached_causal_conv")
class InsertCachedCausalConv(BaseTransform):
    options_cls = InsertCachedCausalConvOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        load_ops()
        nodes = [n for n in gm.graph.nodes if is_op(n, torch.ops.auto_deploy.torch_causal_conv1d)]
        if not nodes:
            return TransformInfo.untouched("no torch_causal_conv1d nodes")
        backend = get_mixer_backend("causal_conv", resolve("causal_conv", self.options.backend, ctx.device.type))
        ensure_shapes(gm, [bound_args(n)[k] for n in nodes for k in ("input", "weight")])
        infos = [_info(n, i) for i, n in enumerate(nodes)]
        iface = ctx.cache_interface()
        insert_cached_mixers(gm, iface, backend, nodes, infos)
        ctx.use_cached_probe()
        return TransformInfo(num_matches=len(nodes), is_clean=False, has_valid_shapes=False,
                             note=f"backend {backend.name}")
