"""insert_cached_attention: replace every canonical attention by the chosen backend's paged cached attention.

Uses only the attention-backend interface (autodeploy_cli.ops.attention_interface); the kernels are imported by the
backend table. The graph gains the sequence-info inputs the backend reads, one metadata-preparation node, and two cache
inputs per layer. Example (torch backend, one layer):

Before:
    %input_ids, %position_ids
    %attn = auto_deploy.torch_attention(%q, %k, %v, None, 0.0, True, 0.25, None, None, None, 'bsnd')
After:
    %input_ids, %position_ids, %seq_len, %input_pos, %batch_info_host, %cu_seqlen, %cache_loc, %cu_num_pages,
    %pages_per_seq, %k_cache_0, %v_cache_0
    %meta = auto_deploy.torch_attention_prepare_metadata(%position_ids, %seq_len, ..., 64, 8)
    %attn = auto_deploy.torch_attention_with_paged_cache(%q, %k, %v, %seq_len, %input_pos, %batch_info_host,
                %meta[0], %meta[1], %meta[2], %meta[3], %k_cache_0, %v_cache_0, 0.25, None, None, None)

After this transform `ctx.cache` holds the cache interface, and `ctx.probe` runs a prefill
through the cached graph so `ad build --verify` compares it with HF eager.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import fx

from autodeploy_cli.errors import ADError
from autodeploy_cli.ops import load_ops
from autodeploy_cli.config.schema import BACKEND_CHOICES
from autodeploy_cli.ops.attention_interface import AttentionNodeInfo, get_attention_backend
from autodeploy_cli.ops.backends import resolve
from autodeploy_cli.graph.core import is_op
from autodeploy_cli.graph.match import module_path
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import register
from autodeploy_cli.graph.inputs import (
    add_buffer_inputs, add_cache_inputs, add_metadata_inputs, bound_args, ensure_shapes,
)


@dataclass
class InsertCachedAttentionOptions(TransformOptions):
    # auto: triton on a CUDA device, torch elsewhere | torch (plain torch, any device) | triton | flashinfer (GPU)
    backend: str = "auto"
    choices: ClassVar[dict] = {"backend": BACKEND_CHOICES["attention"]}


def _layer_number(node: fx.Node, default: int) -> int:
    """The decoder layer a node belongs to (`...layers.<i>...` of its module path), else its graph order."""
    for path, _ in reversed(list((node.meta.get("nn_module_stack") or {}).values())):
        m = re.search(r"(?:^|\.)layers\.(\d+)(?:\.|$)", str(path))
        if m:
            return int(m.group(1))
    return default


_EXPRESSIBLE = ("causal masks, sliding windows (`sliding_window`), ALiBi position biases (`alibi_slopes`), "
                "soft-capping (`logit_cap`) and sinks")


def _node_info(node: fx.Node, layer_idx: int, kv_scales: Optional[dict] = None) -> AttentionNodeInfo:
    a = bound_args(node)
    path = module_path(node)
    where = f"The attention of layer {layer_idx} ({path + ', ' if path else ''}node `{node.name}`)"
    if a["attn_mask"] is not None:
        why = node.meta.get("ad_mask_reason", "the model builds this mask in its own code (not transformers' causal "
                                              "mask builder), e.g. from the activations")
        raise ADError(f"{where} takes an explicit attention mask that cached attention cannot apply: {why}. Cached "
                      f"attention expresses {_EXPRESSIBLE}; a KV cache keeps keys and values only, so a mask that "
                      "is none of these (padding, a mask computed from the activations, a custom pattern) has no "
                      "cached form and ad cannot deploy this model. It would need that mask as an option of "
                      "`auto_deploy::torch_attention` and of the cached backends (for a per-key bias: a cache "
                      "beside the keys).")
    if not a["is_causal"]:
        raise ADError(f"{where} is not causal (every token sees the tokens after it: an encoder or prefix-LM "
                      "layer). A KV cache serves causal decoding only, so ad cannot deploy this model; it builds "
                      "causal decoder-only LMs.")
    q, k, v = (x.meta.get("val") for x in (a["q"], a["k"], a["v"]))
    if q is None or k is None or v is None:
        raise RuntimeError(f"{where}: q/k/v have no shape metadata (run shape propagation first)")
    hd = 2 if a["layout"] == "bnsd" else 3
    head = 1 if a["layout"] == "bnsd" else 2
    # k/v scales only for an FP8 cache (kv_scales is None otherwise): the checkpoint's, else 1.0
    k_scale, v_scale = (None, None) if kv_scales is None else kv_scales.get(_layer_number(node, layer_idx),
                                                                             (1.0, 1.0))
    return AttentionNodeInfo(
        layer_idx=layer_idx, n_heads=int(q.shape[head]), n_kv_heads=int(k.shape[head]), head_dim=int(k.shape[hd]),
        v_head_dim=int(v.shape[hd]), dtype=q.dtype, scale=a["scale"], sinks=a["sinks"],
        sliding_window=a["sliding_window"], logit_cap=a["logit_cap"], k_scale=k_scale, v_scale=v_scale,
        alibi_slopes=a.get("alibi_slopes"))


@register("insert_cached_attention")
class InsertCachedAttention(BaseTransform):
    options_cls = InsertCachedAttentionOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        load_ops()
        source = torch.ops.auto_deploy.torch_attention
        nodes = [n for n in gm.graph.nodes if is_op(n, source)]
        if not nodes:
            return TransformInfo.untouched("no torch_attention nodes")
        backend = get_attention_backend(resolve("attention", self.options.backend, ctx.device.type))
        # head counts and dims come from the q/k/v shapes; propagate them only if a transform left some unknown
        ensure_shapes(gm, [a for n in nodes for a in n.args[:3] if isinstance(a, fx.Node)])
        iface = ctx.cache_interface()
        fp8_kv = iface.cache_config.dtype == getattr(torch, "float8_e4m3fn", None)
        kv_scales = ctx.factory.kv_scales() if fp8_kv else None  # k/v scales matter only to an FP8 cache
        infos = [_node_info(n, i, kv_scales) for i, n in enumerate(nodes)]
        for info in infos:
            reason = backend.refusal(info)
            if reason:
                raise ADError(f"The `{backend.name}` attention backend cannot run layer {info.layer_idx}: {reason}. "
                              "Choose another with `attn_backend=<name>`.")
        cc = iface.cache_config
        graph = gm.graph

        touched: list[fx.Node] = []  # new nodes get their fake values here: no whole-graph shape propagation
        meta, prep_outs = add_metadata_inputs(gm, iface, backend.metadata_fields, backend.prepare_metadata(cc))
        buffers = add_buffer_inputs(gm, iface, backend.global_buffers(cc))
        for node, info in zip(nodes, infos):
            caches = add_cache_inputs(gm, iface, backend.cache_initializers(info, cc), info.layer_idx)
            a = bound_args(node)
            with graph.inserting_before(node):
                q, k, v = a["q"], a["k"], a["v"]
                if a["layout"] != backend.layout:  # bnsd <-> bsnd
                    q, k, v = (graph.call_function(torch.ops.aten.transpose.int, (x, 1, 2)) for x in (q, k, v))
                new = graph.call_function(
                    backend.cached_op(),
                    (q, k, v, *meta.values(), *prep_outs, *caches, *buffers, *backend.constants(info)),
                    backend.constant_kwargs(info))
                out = new
                if a["layout"] != backend.layout:
                    out = graph.call_function(torch.ops.aten.transpose.int, (new, 1, 2))
            touched += [x for x in (q, k, v, new, out) if x not in a.values()]
            if "val" in node.meta:
                out.meta["val"] = node.meta["val"]
            node.replace_all_uses_with(out)
            graph.erase_node(node)

        ctx.use_cached_probe()
        ctx.facts.attention_backend = backend.name
        scales = f", k/v scales from the checkpoint for {len(kv_scales)} layers" if kv_scales else ""
        return TransformInfo.matched(len(nodes), touched, note=f"backend {backend.name}, page size {cc.page_size}, "
                                     f"kv {str(cc.dtype)[6:]}{scales}")
