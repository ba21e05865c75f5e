"""The `triton` attention backend: our Triton paged-attention kernels behind the attention-backend interface.

Ops:
  auto_deploy::triton_attention_prepare_metadata  once per forward: the cache row of every new token (slot_mapping)
  auto_deploy::triton_attention_with_paged_cache  per layer: write this step's k/v (one launch), then attend:
      decode-only batch (T == B): split-KV decode kernel; anything else: the ragged prefill kernel.

Every launch size depends on shapes only and nothing reads the host, so a decode step can be captured in a CUDA
graph. See kernels/triton/attention.py for the metadata conventions.
"""

from __future__ import annotations

from typing import Optional

import torch

from autodeploy_cli.ops.attention_interface import (
    AttentionDescriptor,
    AttentionNodeInfo,
    PrepareMetadata,
    register_attention_backend,
)
from autodeploy_cli.ops.cache import CacheConfig
from kernels.triton import attention as ta


@torch.library.custom_op("auto_deploy::triton_attention_prepare_metadata", mutates_args=())
def triton_attention_prepare_metadata(position_ids: torch.Tensor, seq_len: torch.Tensor, input_pos: torch.Tensor,
                                      cu_seqlen: torch.Tensor, cache_loc: torch.Tensor, cu_num_pages: torch.Tensor,
                                      page_size: int) -> torch.Tensor:
    """-> slot_mapping [T] int64: page * page_size + offset of each new token's cache row."""
    return ta.slot_mapping(seq_len, input_pos, cu_seqlen, cache_loc, cu_num_pages, page_size,
                           position_ids.shape[-1])


@triton_attention_prepare_metadata.register_fake
def _prepare_fake(position_ids, seq_len, input_pos, cu_seqlen, cache_loc, cu_num_pages, page_size):
    return position_ids.new_empty(position_ids.shape[-1], dtype=torch.int64)


@torch.library.custom_op("auto_deploy::triton_attention_with_paged_cache", mutates_args=("k_cache", "v_cache"))
def triton_attention_with_paged_cache(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_len: torch.Tensor, input_pos: torch.Tensor,
    cu_seqlen: torch.Tensor, cache_loc: torch.Tensor, cu_num_pages: torch.Tensor, slot_mapping: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, scale: Optional[float] = None, sinks: Optional[torch.Tensor] = None,
    sliding_window: Optional[int] = None, logit_cap: Optional[float] = None, k_scale: float = 1.0,
    v_scale: float = 1.0,
    alibi_slopes: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """q [1, T, n, d], k/v [1, T, n_kv, d] -> out [1, T, n, d]; writes k/v into the caches first (an FP8 cache holds
    k / k_scale and v / v_scale)."""
    T = q.shape[1]
    ta.write_kv_cache(k[0], v[0], k_cache, v_cache, slot_mapping, k_scale, v_scale)
    args = (q[0], k_cache, v_cache, seq_len, input_pos, cu_seqlen, cache_loc, cu_num_pages)
    kw = dict(scale=scale, sinks=sinks, sliding_window=sliding_window, logit_cap=logit_cap, k_scale=k_scale,
              v_scale=v_scale, alibi_slopes=alibi_slopes)
    if T == seq_len.shape[0]:  # decode-only: one query per sequence
        out = ta.decode_attention(*args, **kw, num_stages=3, max_kv_len=min(k_cache.shape[0] * k_cache.shape[1],
                                                                            8192))
    else:
        out = ta.prefill_attention(*args, **kw)
    return out.unsqueeze(0)


@triton_attention_with_paged_cache.register_fake
def _cached_fake(q, k, v, seq_len, input_pos, cu_seqlen, cache_loc, cu_num_pages, slot_mapping, k_cache, v_cache,
                 scale=None, sinks=None, sliding_window=None, logit_cap=None, k_scale=1.0, v_scale=1.0,
                 alibi_slopes=None):
    return q.new_empty(q.shape)


@register_attention_backend("triton")
class TritonPagedAttention(AttentionDescriptor):
    """Triton paged attention (GPU; CPU only under TRITON_INTERPRET=1): ragged prefill + split-KV decode."""

    layout = "bsnd"
    supports_alibi = True
    metadata_fields = ("seq_len", "input_pos", "cu_seqlen", "cache_loc", "cu_num_pages")

    @classmethod
    def cached_op(cls):
        return torch.ops.auto_deploy.triton_attention_with_paged_cache.default

    @classmethod
    def constants(cls, attn: AttentionNodeInfo) -> list:
        return [*super().constants(attn), *attn.kv_scale_constants()]

    @classmethod
    def prepare_metadata(cls, cache_config: CacheConfig) -> PrepareMetadata:
        return PrepareMetadata(op=torch.ops.auto_deploy.triton_attention_prepare_metadata.default,
                               fields=("position_ids", "seq_len", "input_pos", "cu_seqlen", "cache_loc",
                                       "cu_num_pages"),
                               num_outputs=1, constants=(cache_config.page_size,))

    @classmethod
    def unsupported_reason(cls, attn: AttentionNodeInfo) -> Optional[str]:
        if attn.v_head_dim != attn.head_dim:
            return f"v head dim {attn.v_head_dim} differs from the q/k head dim {attn.head_dim}"
        if attn.n_heads % attn.n_kv_heads:
            return f"{attn.n_heads} query heads are not a multiple of {attn.n_kv_heads} kv heads"
        return None
