"""insert_cached_delta_rule: every canonical (gated) delta rule becomes the backend's cached op over state slots.

Uses only the mixer-backend interface (autodeploy_cli.ops.mixer_interface). The graph gains the sequence-info inputs,
the shared mixer metadata node, and one state input per layer (`delta_state_<i>`: [num_slots, value_heads, key_dim,
value_dim]). Example (torch backend):

Before:
    %o = auto_deploy.torch_gated_delta_rule(%q, %k, %v, %g, %beta, None, True)
After:
    %meta = auto_deploy.torch_mixer_prepare_metadata(%input_pos, %slot_idx)
    %o = auto_deploy.torch_cached_gated_delta_rule(%q, %k, %v, %g, %beta, %batch_info_host, %cu_seqlen_host,
                                                   %meta[0], %meta[1], %delta_state_0, None, True)
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
class InsertCachedDeltaRuleOptions(TransformOptions):
    # auto: triton on a CUDA device, torch elsewhere | torch (plain torch, any device) | triton (GPU kernels)
    backend: str = "auto"
    choices: ClassVar[dict] = {"backend": BACKEND_CHOICES["delta_rule"]}


def _info(node: fx.Node, idx: int) -> MixerNodeInfo:
    a = bound_args(node)
    q, v = a["q"].meta["val"], a["v"].meta["val"]
    dims = {"key_heads": int(q.shape[2]), "key_dim": int(q.shape[3]), "value_heads": int(v.shape[2]),
            "value_dim": int(v.shape[3])}
    return MixerNodeInfo(idx, v.dtype, dims, (a["scale"], bool(a["use_qk_l2norm"])))


@register("insert_cached_delta_rule")
class InsertCachedDeltaRule(BaseTransform):
    options_cls = InsertCachedDeltaRuleOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        load_ops()
        nodes = [n for n in gm.graph.nodes if is_op(n, torch.ops.auto_deploy.torch_gated_delta_rule)]
        if not nodes:
            return TransformInfo.untouched("no torch_gated_delta_rule nodes")
        backend = get_mixer_backend("delta_rule", resolve("delta_rule", self.options.backend, ctx.device.type))
        ensure_shapes(gm, [bound_args(n)[k] for n in nodes for k in ("q", "v")])
        infos = [_info(n, i) for i, n in enumerate(nodes)]
        iface = ctx.cache_interface()
        insert_cached_mixers(gm, iface, backend, nodes, infos)
        ctx.use_cached_probe()
        spec = iface.state_specs["delta_state_0"]
        return TransformInfo(num_matches=len(nodes), is_clean=False, has_valid_shapes=False,
                             note=f"backend {backend.name}, state {list(spec.slot_shape)} {str(spec.dtype)[6:]}")
