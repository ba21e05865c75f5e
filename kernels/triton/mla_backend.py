"""The `triton` MLA backend: our Triton kernels over the compressed paged cache (kernels/triton/mla.py).

Ops:
  auto_deploy::triton_mla_prepare_metadata  once per forward: the cache row of every new token (slot_mapping)
  auto_deploy::triton_mla_with_paged_cache  per layer: write this step's latent and RoPE key (one launch), then
      decode-only batch (T == B): q absorbs W_uk, the split-KV decode kernel (kernels/triton/mla_decode.py, launch
          config by head count: decode_launch) serves a block of heads per latent tile read, W_uv maps the latent
          output back to v_head_dim (no host read: CUDA-graph safe);
      anything else: the sequences' latent history is gathered and up-projected by kv_b_proj (only the new tokens
          when nothing is cached yet), then the ragged causal prefill kernel runs on the expanded K/V.
"""

from __future__ import annotations

import torch

from autodeploy_cli.ops.attention_interface import PrepareMetadata
from autodeploy_cli.ops.cache import CacheConfig
from autodeploy_cli.ops.mla import split_kv_b_proj
from autodeploy_cli.ops.mla_interface import MLADescriptor, register_mla_backend
from kernels.triton import mla as tm


@torch.library.custom_op("auto_deploy::triton_mla_prepare_metadata", mutates_args=())
def triton_mla_prepare_metadata(position_ids: torch.Tensor, seq_len: torch.Tensor, input_pos: torch.Tensor,
                                cu_seqlen: torch.Tensor, cache_loc: torch.Tensor, cu_num_pages: torch.Tensor,
                                page_size: int) -> torch.Tensor:
    """-> slot_mapping [T] int64: page * page_size + offset of each new token's cache row."""
    return tm.new_token_slots(seq_len, input_pos, cu_seqlen, cache_loc, cu_num_pages, page_size,
                              position_ids.shape[-1])


@triton_mla_prepare_metadata.register_fake
def _prepare_fake(position_ids, seq_len, input_pos, cu_seqlen, cache_loc, cu_num_pages, page_size):
    return position_ids.new_empty(position_ids.shape[-1], dtype=torch.int64)


def decode_absorbed(q_nope: torch.Tensor, q_pe: torch.Tensor, weight: torch.Tensor, ckv_cache: torch.Tensor,
                    kpe_cache: torch.Tensor, seq_len: torch.Tensor, input_pos: torch.Tensor, cache_loc: torch.Tensor,
                    cu_num_pages: torch.Tensor, scale: float) -> torch.Tensor:
    """One query per sequence: q_nope [B, n, nope], q_pe [B, n, rope] -> [B, n, v] with the absorbed weights."""
    n, nope = q_nope.shape[1], q_nope.shape[2]
    w_uk, w_uv = split_kv_b_proj(weight, n, nope)
    q_lat = tm.absorb_q(q_nope, w_uk)
    max_kv = min(ckv_cache.shape[0] * ckv_cache.shape[1], 8192)  # static: the split count must not change per step
    # (it is a constexpr of the kernel: a new count would recompile, and a captured CUDA graph would not see it)
    out_lat = tm.mla_decode(q_lat, q_pe, ckv_cache, kpe_cache, seq_len, input_pos, cache_loc, cu_num_pages, scale,
                            max_kv_len=max_kv, **tm.decode_launch(n))
    return tm.unabsorb_out(out_lat, w_uv)


def prefill_expanded(q_nope: torch.Tensor, q_pe: torch.Tensor, compressed_kv: torch.Tensor, kpe: torch.Tensor,
                     weight: torch.Tensor, seq_len: torch.Tensor, input_pos: torch.Tensor, cu_seqlen: torch.Tensor,
                     cache_loc: torch.Tensor, cu_num_pages: torch.Tensor, seq_len_with_cache_host: torch.Tensor,
                     ckv_cache: torch.Tensor, kpe_cache: torch.Tensor, scale: float) -> torch.Tensor:
    """Any mix of prefill, chunked prefill and decode: q_nope [T, n, nope] ... -> [T, n, v] on expanded K/V."""
    T, n, nope = q_nope.shape
    total = int(seq_len_with_cache_host.sum())  # host tensor: no device sync
    if total == T:  # nothing cached before this step: the new tokens are the whole history
        ckv, kp, cu_k = compressed_kv, kpe, cu_seqlen
    else:
        rows, cu_k = tm.history_rows(seq_len, input_pos, cache_loc, cu_num_pages, ckv_cache.shape[1], total)
        ckv = ckv_cache.view(-1, ckv_cache.shape[-1]).index_select(0, rows)
        kp = kpe_cache.view(-1, kpe_cache.shape[-1]).index_select(0, rows)
    k_nope, v = tm.expand_kv(ckv, weight, n, nope)
    return tm.mla_prefill(q_nope, q_pe, k_nope, kp.to(q_pe.dtype), v.to(q_nope.dtype), cu_seqlen, cu_k, scale)


@torch.library.custom_op("auto_deploy::triton_mla_with_paged_cache", mutates_args=("ckv_cache", "kpe_cache"))
def triton_mla_with_paged_cache(
    q_nope: torch.Tensor, q_pe: torch.Tensor, compressed_kv: torch.Tensor, kpe: torch.Tensor,
    kv_b_proj_weight: torch.Tensor, seq_len: torch.Tensor, input_pos: torch.Tensor, cu_seqlen: torch.Tensor,
    cache_loc: torch.Tensor, cu_num_pages: torch.Tensor, seq_len_with_cache_host: torch.Tensor,
    slot_mapping: torch.Tensor, ckv_cache: torch.Tensor, kpe_cache: torch.Tensor, scale: float,
) -> torch.Tensor:
    """q_nope [1, T, n, nope], q_pe [1, T, n, rope], compressed_kv [1, T, r], kpe [1, T, 1, rope] -> [1, T, n, v]."""
    T = q_nope.shape[1]
    tm.write_mla_cache(compressed_kv[0], kpe[0, :, 0], ckv_cache, kpe_cache, slot_mapping)
    if T == seq_len.shape[0]:
        out = decode_absorbed(q_nope[0], q_pe[0], kv_b_proj_weight, ckv_cache, kpe_cache, seq_len, input_pos,
                              cache_loc, cu_num_pages, scale)
    else:
        out = prefill_expanded(q_nope[0], q_pe[0], compressed_kv[0], kpe[0, :, 0], kv_b_proj_weight, seq_len,
                               input_pos, cu_seqlen, cache_loc, cu_num_pages, seq_len_with_cache_host, ckv_cache,
                               kpe_cache, scale)
    return out.unsqueeze(0)


@triton_mla_with_paged_cache.register_fake
def _cached_fake(q_nope, q_pe, compressed_kv, kpe, kv_b_proj_weight, seq_len, input_pos, cu_seqlen, cache_loc,
                 cu_num_pages, seq_len_with_cache_host, slot_mapping, ckv_cache, kpe_cache, scale):
    n = q_nope.shape[2]
    return q_nope.new_empty(*q_nope.shape[:-1], kv_b_proj_weight.shape[0] // n - q_nope.shape[-1])


@register_mla_backend("triton")
class TritonPagedMLA(MLADescriptor):
    """Triton MLA (GPU; CPU only under TRITON_INTERPRET=1): absorbed-weight split-KV decode, expanded prefill."""

    metadata_fields = ("seq_len", "input_pos", "cu_seqlen", "cache_loc", "cu_num_pages", "seq_len_with_cache_host")

    @classmethod
    def cached_op(cls):
        return torch.ops.auto_deploy.triton_mla_with_paged_cache.default

    @classmethod
    def prepare_metadata(cls, cache_config: CacheConfig) -> PrepareMetadata:
        return PrepareMetadata(op=torch.ops.auto_deploy.triton_mla_prepare_metadata.default,
                               fields=("position_ids", "seq_len", "input_pos", "cu_seqlen", "cache_loc",
                                       "cu_num_pages"),
                               num_outputs=1, constants=(cache_config.page_size,))
