"""The `flashinfer` MLA backend: FlashInfer's MLA kernels over the compressed paged cache, planned once per step.

Ops:
  auto_deploy::flashinfer_mla_prepare_metadata  once per forward: cache rows of the new tokens, and the step's
      layout (host tensors) handed to the planner, so layers only `run`
  auto_deploy::flashinfer_mla_with_paged_cache  per layer: write the latent and RoPE key (Triton), then
      fresh prompts (nothing cached yet): BatchPrefillWithRaggedKVCacheWrapper on K/V expanded by kv_b_proj;
      decode and chunked prefill: BatchMLAPagedAttentionWrapper with the absorbed weights (q_nope @ W_uk in,
          the latent output @ W_uv out)

CUDA graphs: decode graphs use a fixed-buffer MLA wrapper per captured batch size; the pre-replay hook re-plans
it on the host before every replay. float32 activations (FlashInfer runs half types only) and latent/RoPE widths
other than FlashInfer's (512, 64) go to the Triton MLA kernels.
"""

from __future__ import annotations

import torch

from autodeploy_cli.ops import graph_hooks
from autodeploy_cli.ops.attention_interface import PrepareMetadata
from autodeploy_cli.ops.cache import CacheConfig
from autodeploy_cli.ops.mla import split_kv_b_proj
from autodeploy_cli.ops.mla_interface import MLADescriptor, register_mla_backend
from kernels.flashinfer import mla as fm
from kernels.triton import mla as tm
from kernels.triton.mla_backend import decode_absorbed, prefill_expanded


@torch.library.custom_op("auto_deploy::flashinfer_mla_prepare_metadata", mutates_args=())
def flashinfer_mla_prepare_metadata(
    position_ids: torch.Tensor, seq_len: torch.Tensor, input_pos: torch.Tensor, cu_seqlen: torch.Tensor,
    cache_loc: torch.Tensor, cu_num_pages: torch.Tensor, cu_seqlen_host: torch.Tensor,
    cu_num_pages_host: torch.Tensor, seq_len_with_cache_host: torch.Tensor, page_size: int,
) -> torch.Tensor:
    """-> slot_mapping [T]; also records this step's layout for the planner (host tensors: no sync)."""
    fm.plan_step(fm.step_meta(cu_seqlen_host, cu_num_pages_host, seq_len_with_cache_host, cache_loc),
                 graph_hooks.capture_batch)
    return tm.new_token_slots(seq_len, input_pos, cu_seqlen, cache_loc, cu_num_pages, page_size,
                              position_ids.shape[-1])


@flashinfer_mla_prepare_metadata.register_fake
def _prepare_fake(position_ids, seq_len, input_pos, cu_seqlen, cache_loc, cu_num_pages, cu_seqlen_host,
                  cu_num_pages_host, seq_len_with_cache_host, page_size):
    return position_ids.new_empty(position_ids.shape[-1], dtype=torch.int64)


def _flashinfer_mla(q_nope, q_pe, compressed_kv, kpe, weight, ckv_cache, kpe_cache, scale) -> torch.Tensor:
    """[T, n, nope], [T, n, rope], [T, r], [T, rope] -> [T, n, v] with the step's plan."""
    n, nope = q_nope.shape[1], q_nope.shape[2]
    if fm.is_fresh():
        k_nope, v = tm.expand_kv(compressed_kv, weight, n, nope)
        q = torch.cat([q_nope, q_pe], dim=-1)
        k = torch.cat([k_nope, kpe.unsqueeze(1).expand(-1, n, -1)], dim=-1)
        return fm.ragged_prefill(q, k, v.contiguous(), scale)
    w_uk, w_uv = split_kv_b_proj(weight, n, nope)
    q_lat = tm.absorb_q(q_nope, w_uk).contiguous()
    out_lat = fm.paged_mla(q_lat, q_pe.contiguous(), ckv_cache, kpe_cache, scale)
    return tm.unabsorb_out(out_lat, w_uv)


@torch.library.custom_op("auto_deploy::flashinfer_mla_with_paged_cache", mutates_args=("ckv_cache", "kpe_cache"))
def flashinfer_mla_with_paged_cache(
    q_nope: torch.Tensor, q_pe: torch.Tensor, compressed_kv: torch.Tensor, kpe: torch.Tensor,
    kv_b_proj_weight: torch.Tensor, seq_len: torch.Tensor, input_pos: torch.Tensor, cu_seqlen: torch.Tensor,
    cache_loc: torch.Tensor, cu_num_pages: torch.Tensor, seq_len_with_cache_host: torch.Tensor,
    slot_mapping: torch.Tensor, ckv_cache: torch.Tensor, kpe_cache: torch.Tensor, scale: float,
) -> torch.Tensor:
    """q_nope [1, T, n, nope], q_pe [1, T, n, rope], compressed_kv [1, T, r], kpe [1, T, 1, rope] -> [1, T, n, v]."""
    ckv, kp = compressed_kv[0], kpe[0, :, 0]
    tm.write_mla_cache(ckv, kp, ckv_cache, kpe_cache, slot_mapping)
    dims = (ckv_cache.shape[-1], kpe_cache.shape[-1])
    if q_nope.dtype == torch.float32 or dims != fm.HEAD_DIMS:  # no FlashInfer kernel: the Triton path
        if q_nope.shape[1] == seq_len.shape[0]:
            out = decode_absorbed(q_nope[0], q_pe[0], kv_b_proj_weight, ckv_cache, kpe_cache, seq_len, input_pos,
                                  cache_loc, cu_num_pages, scale)
        else:
            out = prefill_expanded(q_nope[0], q_pe[0], ckv, kp, kv_b_proj_weight, seq_len, input_pos, cu_seqlen,
                                   cache_loc, cu_num_pages, seq_len_with_cache_host, ckv_cache, kpe_cache, scale)
        return out.unsqueeze(0)
    return _flashinfer_mla(q_nope[0], q_pe[0], ckv, kp, kv_b_proj_weight, ckv_cache, kpe_cache, scale).unsqueeze(0)


@flashinfer_mla_with_paged_cache.register_fake
def _cached_fake(q_nope, q_pe, compressed_kv, kpe, kv_b_proj_weight, seq_len, input_pos, cu_seqlen, cache_loc,
                 cu_num_pages, seq_len_with_cache_host, slot_mapping, ckv_cache, kpe_cache, scale):
    n = q_nope.shape[2]
    return q_nope.new_empty(*q_nope.shape[:-1], kv_b_proj_weight.shape[0] // n - q_nope.shape[-1])


def _pre_replay(batch: int, named: dict) -> None:
    """Before a decode graph replays: plan its fixed-buffer MLA wrapper for this step's page table."""
    if "seq_len_with_cache_host" not in named or "cu_num_pages_host" not in named:
        return
    meta = fm.step_meta(named["cu_seqlen_host"], named["cu_num_pages_host"], named["seq_len_with_cache_host"],
                        named["cache_loc"])
    fm.replan_for_graph(meta, batch, list(fm.CAPTURED_KEYS.get(batch, [])))


graph_hooks.register_pre_replay_hook("flashinfer_mla", _pre_replay)


@register_mla_backend("flashinfer")
class FlashInferPagedMLA(MLADescriptor):
    """FlashInfer MLA (CUDA, half types): paged MLA with absorbed weights, ragged prefill for fresh prompts."""

    metadata_fields = ("seq_len", "input_pos", "cu_seqlen", "cache_loc", "cu_num_pages", "seq_len_with_cache_host")

    @classmethod
    def cached_op(cls):
        return torch.ops.auto_deploy.flashinfer_mla_with_paged_cache.default

    @classmethod
    def prepare_metadata(cls, cache_config: CacheConfig) -> PrepareMetadata:
        return PrepareMetadata(op=torch.ops.auto_deploy.flashinfer_mla_prepare_metadata.default,
                               fields=("position_ids", "seq_len", "input_pos", "cu_seqlen", "cache_loc",
                                       "cu_num_pages", "cu_seqlen_host", "cu_num_pages_host",
                                       "seq_len_with_cache_host"),
                               num_outputs=1, constants=(cache_config.page_size,))
