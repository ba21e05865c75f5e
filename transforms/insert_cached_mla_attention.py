"""insert_cached_mla_attention: replace every canonical MLA by the chosen backend's paged, compressed cached MLA.

Uses only the MLA-backend interface (autodeploy_cli.ops.mla_interface). Each layer gets two paged caches without a
head dimension, `ckv_cache_<i> [pages, page_size, kv_lora_rank]` and `kpe_cache_<i> [pages, page_size, rope_dim]`,
so the KV pool costs (kv_lora_rank + rope_dim) values per token and layer (DeepSeek-V3: 576 instead of the 40,960
of expanded per-head K/V). Example (torch backend, one layer):

Before:
    %mla = auto_deploy.torch_mla(%q_nope, %q_pe, %ckv, %kpe, %kv_b_proj_weight, True, 0.0722, 'bsnd')
After:
    %input_ids, %position_ids, %seq_len, %input_pos, %batch_info_host, ..., %ckv_cache_0, %kpe_cache_0
    %meta = auto_deploy.torch_attention_prepare_metadata(%position_ids, %seq_len, ..., 64, 8)
    %mla = auto_deploy.torch_mla_with_paged_cache(%q_nope, %q_pe, %ckv, %kpe, %kv_b_proj_weight, %seq_len,
               %input_pos, %batch_info_host, %meta[0], %meta[1], %meta[2], %meta[3], %ckv_cache_0, %kpe_cache_0,
               0.0722)

Shares the cache interface (and the sequence-info inputs) with insert_cached_attention, so a model with both kinds
of layers gets one page pool; afterwards `ctx.probe` runs prefills through the cached graph so `ad build --verify`
compares it with HF eager.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx

from autodeploy_cli.config.schema import BACKEND_CHOICES
from autodeploy_cli.errors import ADError
from autodeploy_cli.graph.core import is_op
from autodeploy_cli.graph.inputs import (
    add_buffer_inputs, add_cache_inputs, add_metadata_inputs, bound_args, ensure_shapes,
)
from autodeploy_cli.ops import load_ops
from autodeploy_cli.ops.backends import resolve
from autodeploy_cli.ops.mla_interface import MLANodeInfo, get_mla_backend
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import register


@dataclass
class InsertCachedMlaAttentionOptions(TransformOptions):
    # auto: triton on a CUDA device, torch elsewhere | torch (plain torch, any device) | triton (our absorbed-weight
    # decode kernel + ragged prefill) | flashinfer (BatchMLAPagedAttentionWrapper + ragged prefill, GPU)
    backend: str = "auto"
    choices: ClassVar[dict] = {"backend": BACKEND_CHOICES["mla"]}


def _node_info(node: fx.Node, layer_idx: int) -> MLANodeInfo:
    a = bound_args(node)
    where = f"MLA node `{node.name}` (layer {layer_idx})"
    if not a["is_causal"]:
        raise ADError(f"The {where} is not causal; cached MLA supports causal decoder attention only.")
    vals = [a[k].meta.get("val") for k in ("q_nope", "q_pe", "compressed_kv", "kv_b_proj_weight")]
    if any(v is None for v in vals):
        raise RuntimeError(f"{where}: its inputs have no shape metadata (run shape propagation first)")
    q_nope, q_pe, ckv, w = vals
    head = 1 if a["layout"] == "bnsd" else 2
    n, nope, rope = int(q_nope.shape[head]), int(q_nope.shape[-1]), int(q_pe.shape[-1])
    scale = a["scale"] if a["scale"] is not None else (nope + rope) ** -0.5
    return MLANodeInfo(layer_idx=layer_idx, n_heads=n, qk_nope_head_dim=nope, qk_rope_head_dim=rope,
                       kv_lora_rank=int(ckv.shape[-1]), v_head_dim=int(w.shape[0]) // n - nope, dtype=q_nope.dtype,
                       scale=float(scale))


def _replace(gm: fx.GraphModule, node: fx.Node, op, extra: list) -> None:
    """node -> op(q_nope, q_pe, ckv, kpe, weight, *extra) in bsnd layout (transposes around it for bnsd)."""
    graph = gm.graph
    a = bound_args(node)
    with graph.inserting_before(node):
        q_nope, q_pe, kpe = a["q_nope"], a["q_pe"], a["kpe"]
        if a["layout"] == "bnsd":
            q_nope, q_pe, kpe = (graph.call_function(torch.ops.aten.transpose.int, (x, 1, 2)) for x in (q_nope, q_pe, kpe))
        out = graph.call_function(op, (q_nope, q_pe, a["compressed_kv"], kpe, a["kv_b_proj_weight"], *extra))
        if a["layout"] == "bnsd":
            out = graph.call_function(torch.ops.aten.transpose.int, (out, 1, 2))
    if "val" in node.meta:
        out.meta["val"] = node.meta["val"]
    node.replace_all_uses_with(out)
    graph.erase_node(node)


@register("insert_cached_mla_attention")
class InsertCachedMlaAttention(BaseTransform):
    options_cls = InsertCachedMlaAttentionOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        load_ops()
        nodes = [n for n in gm.graph.nodes if is_op(n, torch.ops.auto_deploy.torch_mla)]
        if not nodes:
            return TransformInfo.untouched("no torch_mla nodes")
        backend = get_mla_backend(resolve("mla", self.options.backend, ctx.device.type))
        ensure_shapes(gm, [x for n in nodes for x in n.args[:5] if isinstance(x, fx.Node)])
        infos = [_node_info(n, i) for i, n in enumerate(nodes)]
        for info in infos:
            reason = backend.unsupported_reason(info)
            if reason:
                raise ADError(f"The `{backend.name}` MLA backend cannot run layer {info.layer_idx}: {reason}. "
                              "Choose another with `mla_backend=<name>`.")
        iface = ctx.cache_interface()
        cc = iface.cache_config
        meta, prep_outs = add_metadata_inputs(gm, iface, backend.metadata_fields, backend.prepare_metadata(cc))
        buffers = add_buffer_inputs(gm, iface, backend.global_buffers(cc))
        for node, info in zip(nodes, infos):
            caches = add_cache_inputs(gm, iface, backend.cache_initializers(info, cc), info.layer_idx)
            _replace(gm, node, backend.cached_op(), [*meta.values(), *prep_outs, *caches, *buffers,
                                                     *backend.constants(info)])
        ctx.use_cached_probe()
        ctx.facts.mla_backend = backend.name
        first = infos[0]
        per_token = sum(i.kv_lora_rank + i.qk_rope_head_dim for i in infos) * cc.dtype.itemsize
        return TransformInfo(num_matches=len(nodes), is_clean=False, has_valid_shapes=False,
                             note=f"backend {backend.name}, compressed KV: kv_lora_rank {first.kv_lora_rank} + rope "
                                  f"{first.qk_rope_head_dim} per token and layer, {per_token} bytes per token "
                                  f"({str(cc.dtype)[6:]})")
