"""The `torch` MLA backend: paged, compressed MLA in plain torch (CPU and GPU), the reference for the others.

Ops:
  auto_deploy::torch_attention_prepare_metadata  (shared with the torch attention backend) once per forward
  auto_deploy::torch_mla_with_paged_cache        per layer: write this step's latent and RoPE key into their pages,
                                                 then attend with the absorbed weights

Caches: ckv_cache [pages, page_size, kv_lora_rank], kpe_cache [pages, page_size, rope_dim]. Token j of sequence b
sits at position input_pos[b] + j and sees positions 0 .. input_pos[b] + j. Math (float32), per head h:
    q_lat[h] = q_nope[h] @ W_uk[h]                        (W_uk [n, nope, r] from kv_b_proj)
    p = softmax((q_lat[h] . ckv + q_pe[h] . kpe) * scale)  over the visible positions
    out[h] = (p @ ckv) @ W_uv[h].T                        (W_uv [n, v, r])
which equals torch_mla's expanded K/V form (a second, independent formula for the tests to compare).
"""

from __future__ import annotations

import torch

from autodeploy_cli.ops.cache import CacheConfig
from autodeploy_cli.ops.mla import split_kv_b_proj
from autodeploy_cli.ops.mla_interface import MLADescriptor, register_mla_backend
from autodeploy_cli.ops.attention_interface import PrepareMetadata
from kernels.torch.attention import _write_slots


def _pages_to_read(page_table: torch.Tensor, batch_info_host: torch.Tensor, page_size: int) -> torch.Tensor:
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return page_table  # static: every page a sequence may own
    return page_table[:, : min(-(-int(batch_info_host[6]) // page_size), page_table.shape[1])]


@torch.library.custom_op("auto_deploy::torch_mla_with_paged_cache", mutates_args=("ckv_cache", "kpe_cache"))
def torch_mla_with_paged_cache(
    q_nope: torch.Tensor, q_pe: torch.Tensor, compressed_kv: torch.Tensor, kpe: torch.Tensor,
    kv_b_proj_weight: torch.Tensor, seq_len: torch.Tensor, input_pos: torch.Tensor, batch_info_host: torch.Tensor,
    page_table: torch.Tensor, slots: torch.Tensor, tok_seq: torch.Tensor, tok_pos: torch.Tensor,
    ckv_cache: torch.Tensor, kpe_cache: torch.Tensor, scale: float,
) -> torch.Tensor:
    """q_nope [1, T, n, nope], q_pe [1, T, n, rope], compressed_kv [1, T, r], kpe [1, T, 1, rope] -> [1, T, n, v]."""
    _, T, n, nope = q_nope.shape
    r, rope = ckv_cache.shape[-1], kpe_cache.shape[-1]
    B, ps = seq_len.shape[0], ckv_cache.shape[1]
    _write_slots(ckv_cache.view(-1, r), slots, compressed_kv[0])
    _write_slots(kpe_cache.view(-1, rope), slots, kpe[0, :, 0])

    pt = _pages_to_read(page_table, batch_info_host, ps)
    L = pt.shape[1] * ps
    ckv = ckv_cache.index_select(0, pt.reshape(-1)).reshape(B, L, r).float()
    kp = kpe_cache.index_select(0, pt.reshape(-1)).reshape(B, L, rope).float()
    w_uk, w_uv = split_kv_b_proj(kv_b_proj_weight.float(), n, nope)

    ip = input_pos.long()
    if T == B:  # decode-only: one query per sequence
        qn, qp, q_pos = q_nope[0].unsqueeze(1), q_pe[0].unsqueeze(1), ip.unsqueeze(1)  # [B, 1, n, .], [B, 1]
    else:  # pad the queries per sequence: [B, S, n, .]
        S = int(batch_info_host[5])
        local = tok_pos - ip[tok_seq]
        qn = q_nope.new_zeros(B, S, n, nope)
        qp = q_pe.new_zeros(B, S, n, rope)
        qn[tok_seq, local] = q_nope[0]
        qp[tok_seq, local] = q_pe[0]
        q_pos = ip.unsqueeze(1) + torch.arange(S, device=q_nope.device)
    q_lat = torch.einsum("bshd,hdr->bhsr", qn.float(), w_uk)
    scores = (q_lat @ ckv.unsqueeze(1).transpose(-1, -2)
              + torch.einsum("bshd,bld->bhsl", qp.float(), kp)) * scale  # [B, n, S, L]
    visible = torch.arange(L, device=q_nope.device).view(1, 1, L) <= q_pos.unsqueeze(-1)  # [B, S, L]
    probs = torch.softmax(scores.masked_fill(~visible[:, None], float("-inf")), dim=-1)
    out = torch.einsum("bhsr,hvr->bshv", probs @ ckv.unsqueeze(1), w_uv).to(q_nope.dtype)  # [B, S, n, v]
    if T == B:
        return out.reshape(1, T, n, -1)
    return out[tok_seq, tok_pos - ip[tok_seq]].unsqueeze(0)


@torch_mla_with_paged_cache.register_fake
def _cached_fake(q_nope, q_pe, compressed_kv, kpe, kv_b_proj_weight, seq_len, input_pos, batch_info_host,
                 page_table, slots, tok_seq, tok_pos, ckv_cache, kpe_cache, scale):
    n = q_nope.shape[2]
    return q_nope.new_empty(*q_nope.shape[:-1], kv_b_proj_weight.shape[0] // n - q_nope.shape[-1])


@register_mla_backend("torch")
class TorchPagedMLA(MLADescriptor):
    """Plain-torch paged MLA over the compressed caches (any device, any dtype); the reference for the others."""

    metadata_fields = ("seq_len", "input_pos", "batch_info_host")

    @classmethod
    def cached_op(cls):
        return torch.ops.auto_deploy.torch_mla_with_paged_cache.default

    @classmethod
    def prepare_metadata(cls, cache_config: CacheConfig) -> PrepareMetadata:
        import kernels.torch.attention  # noqa: F401 - registers the shared prepare-metadata op

        return PrepareMetadata(
            op=torch.ops.auto_deploy.torch_attention_prepare_metadata.default,
            fields=("position_ids", "seq_len", "input_pos", "cu_seqlen", "cache_loc", "cu_num_pages", "pages_per_seq"),
            num_outputs=4,
            constants=(cache_config.page_size, cache_config.max_pages_per_seq),
        )
