"""The `flashinfer` attention backend: FlashInfer batch prefill / tensor-core batch decode over the paged KV cache.

Ops:
  auto_deploy::flashinfer_attention_prepare_metadata  once per forward: cache rows of the new tokens, and the
      step's plan input (host page table) handed to the planner, so layers only `run` (no per-layer planning)
  auto_deploy::flashinfer_attention_with_paged_cache  per layer: write k/v (Triton), then FlashInfer attention

CUDA graphs: decode graphs use FlashInfer's fixed-buffer decode wrappers (one per captured batch size); the
pre-replay hook re-plans them on the host before every replay. float32 activations (FlashInfer runs half types
only) go to the Triton kernels. Attention sinks are not supported.
"""

from __future__ import annotations

from typing import Optional

import torch

from autodeploy_cli.ops import graph_hooks
from autodeploy_cli.ops.attention_interface import (
    AttentionDescriptor,
    AttentionNodeInfo,
    PrepareMetadata,
    register_attention_backend,
)
from autodeploy_cli.ops.cache import CacheConfig
from kernels.flashinfer import attention as fa
from kernels.triton import attention as ta


def _meta(cu_seqlen_host, cu_num_pages_host, last_page_len_host, cache_loc, is_decode) -> fa.StepMeta:
    return fa.step_meta_from_host(cu_seqlen_host, cu_num_pages_host, last_page_len_host, cache_loc, is_decode)


@torch.library.custom_op("auto_deploy::flashinfer_attention_prepare_metadata", mutates_args=())
def flashinfer_attention_prepare_metadata(
    position_ids: torch.Tensor, seq_len: torch.Tensor, input_pos: torch.Tensor, cu_seqlen: torch.Tensor,
    cache_loc: torch.Tensor, cu_num_pages: torch.Tensor, cu_seqlen_host: torch.Tensor,
    cu_num_pages_host: torch.Tensor, last_page_len_host: torch.Tensor, page_size: int,
) -> torch.Tensor:
    """-> slot_mapping [T]; also records this step's page table for the planner (host tensors: no sync)."""
    T, B = position_ids.shape[-1], seq_len.shape[0]
    fa.plan_step(_meta(cu_seqlen_host, cu_num_pages_host, last_page_len_host, cache_loc, T == B),
                 graph_hooks.capture_batch)
    return ta.slot_mapping(seq_len, input_pos, cu_seqlen, cache_loc, cu_num_pages, page_size, T)


@flashinfer_attention_prepare_metadata.register_fake
def _prepare_fake(position_ids, seq_len, input_pos, cu_seqlen, cache_loc, cu_num_pages, cu_seqlen_host,
                  cu_num_pages_host, last_page_len_host, page_size):
    return position_ids.new_empty(position_ids.shape[-1], dtype=torch.int64)


@torch.library.custom_op("auto_deploy::flashinfer_attention_with_paged_cache", mutates_args=("k_cache", "v_cache"))
def flashinfer_attention_with_paged_cache(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_len: torch.Tensor, input_pos: torch.Tensor,
    cu_seqlen: torch.Tensor, cache_loc: torch.Tensor, cu_num_pages: torch.Tensor, slot_mapping: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, scale: Optional[float] = None, sinks: Optional[torch.Tensor] = None,
    sliding_window: Optional[int] = None, logit_cap: Optional[float] = None, k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """q [1, T, n, d], k/v [1, T, n_kv, d] -> out [1, T, n, d]; writes k/v into the caches first (an FP8 cache holds
    k / k_scale and v / v_scale; FlashInfer's FP8-KV kernels take the scales)."""
    ta.write_kv_cache(k[0], v[0], k_cache, v_cache, slot_mapping, k_scale, v_scale)
    if q.dtype == torch.float32:  # FlashInfer has no fp32 kernels
        args = (q[0], k_cache, v_cache, seq_len, input_pos, cu_seqlen, cache_loc, cu_num_pages)
        kw = dict(scale=scale, sinks=sinks, sliding_window=sliding_window, logit_cap=logit_cap, k_scale=k_scale,
                  v_scale=v_scale)
        out = ta.decode_attention(*args, **kw) if q.shape[1] == seq_len.shape[0] else ta.prefill_attention(*args, **kw)
        return out.unsqueeze(0)
    d = q.shape[-1]
    kv = (k_scale, v_scale) if ta.is_fp8(k_cache) else (None, None)
    out = fa.attention(q[0], k_cache, v_cache, d ** -0.5 if scale is None else scale, sliding_window, logit_cap,
                       k_scale=kv[0], v_scale=kv[1])
    return out.unsqueeze(0)


@flashinfer_attention_with_paged_cache.register_fake
def _cached_fake(q, k, v, seq_len, input_pos, cu_seqlen, cache_loc, cu_num_pages, slot_mapping, k_cache, v_cache,
                 scale=None, sinks=None, sliding_window=None, logit_cap=None, k_scale=1.0, v_scale=1.0):
    return q.new_empty(q.shape)


def _pre_replay(batch: int, named: dict) -> None:
    """Before a decode graph replays: plan its fixed-buffer wrappers for this step's page table."""
    if "cu_num_pages_host" not in named or "last_page_len_host" not in named:
        return  # not a graph of this backend (e.g. an MLA model's)
    meta = _meta(named["cu_seqlen_host"], named["cu_num_pages_host"], named["last_page_len_host"],
                 named["cache_loc"], True)
    fa.replan_for_graph(meta, batch, [k for k in fa.CAPTURED_KEYS.get(batch, [])])


graph_hooks.register_pre_replay_hook("flashinfer", _pre_replay)


@register_attention_backend("flashinfer")
class FlashInferPagedAttention(AttentionDescriptor):
    """FlashInfer paged attention (CUDA, half types): planned once per step, CUDA-graph safe for decode."""

    layout = "bsnd"
    metadata_fields = ("seq_len", "input_pos", "cu_seqlen", "cache_loc", "cu_num_pages")

    @classmethod
    def cached_op(cls):
        return torch.ops.auto_deploy.flashinfer_attention_with_paged_cache.default

    @classmethod
    def constants(cls, attn: AttentionNodeInfo) -> list:
        return [*super().constants(attn), *attn.kv_scale_constants()]

    @classmethod
    def prepare_metadata(cls, cache_config: CacheConfig) -> PrepareMetadata:
        return PrepareMetadata(op=torch.ops.auto_deploy.flashinfer_attention_prepare_metadata.default,
                               fields=("position_ids", "seq_len", "input_pos", "cu_seqlen", "cache_loc",
                                       "cu_num_pages", "cu_seqlen_host", "cu_num_pages_host", "last_page_len_host"),
                               num_outputs=1, constants=(cache_config.page_size,))

    @classmethod
    def unsupported_reason(cls, attn: AttentionNodeInfo) -> Optional[str]:
        if attn.sinks is not None:
            return "attention sinks are not supported by the FlashInfer wrappers; use attn_backend=triton"
        if attn.alibi_slopes is not None:
            # FlashInfer's pos_encoding_mode="ALIBI" derives its own slopes (the power-of-two formula) and is not
            # wired up or tested here; MPT's and Falcon's slopes differ from it for some head counts
            return ("ALiBi position biases are not wired to FlashInfer's ALiBi mode (its slopes are its own, not "
                    "the model's); use attn_backend=triton or attn_backend=torch")
        if attn.v_head_dim != attn.head_dim:
            return f"v head dim {attn.v_head_dim} differs from the q/k head dim {attn.head_dim}"
        if attn.k_scale is not None and attn.head_dim < 64:  # measured on the H200: "Invalid configuration"
            return (f"FlashInfer's prefill kernels over an FP8 KV cache need head_dim >= 64 (this model has "
                    f"{attn.head_dim}); use attn_backend=triton, or a bf16 KV cache")
        return None
