"""The `torch` attention backend: paged cached attention in plain torch (CPU and GPU), the reference for the others.

Ops:
  auto_deploy::torch_attention_prepare_metadata  once per forward: padded page table + per-token cache slots
  auto_deploy::torch_attention_with_paged_cache  per layer: write this step's k/v into the pages, then attend

Conventions (see autodeploy_cli.ops.batch.FIELDS): q [1, T, n, d], k/v [1, T, n_kv, d] hold the tokens
of all sequences back to back; k_cache/v_cache [num_pages, page_size, n_kv, d]. Token j of sequence b sits at cache
position input_pos[b] + j and sees keys 0 .. input_pos[b] + j (causal, bottom-right), minus keys `sliding_window`
or more positions back. A decode-only batch (T == B) runs with shapes fixed by the inputs and no host read when a
CUDA graph is being captured.
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


@torch.library.custom_op("auto_deploy::torch_attention_prepare_metadata", mutates_args=())
def torch_attention_prepare_metadata(
    position_ids: torch.Tensor,
    seq_len: torch.Tensor,
    input_pos: torch.Tensor,
    cu_seqlen: torch.Tensor,
    cache_loc: torch.Tensor,
    cu_num_pages: torch.Tensor,
    pages_per_seq: torch.Tensor,
    page_size: int,
    max_pages_per_seq: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> page_table [B, max_pages_per_seq] (unused entries 0), slots [T] (page * page_size + offset of each new
    token's cache row), tok_seq [T] (sequence of each token), tok_pos [T] (cache position of each token)."""
    T, dev = position_ids.shape[-1], position_ids.device
    tok = torch.arange(T, device=dev)
    tok_seq = torch.searchsorted(cu_seqlen[1:].long(), tok, right=True)
    tok_pos = tok - cu_seqlen.long()[tok_seq] + input_pos.long()[tok_seq]
    j = torch.arange(max_pages_per_seq, device=dev)
    idx = (cu_num_pages[:-1].long().unsqueeze(1) + j).clamp(max=cache_loc.shape[0] - 1)  # [B, P]
    valid = j < pages_per_seq.long().unsqueeze(1)
    page_table = torch.where(valid, cache_loc.long()[idx], torch.zeros_like(idx))
    slots = page_table[tok_seq, tok_pos // page_size] * page_size + tok_pos % page_size
    return page_table, slots, tok_seq, tok_pos


@torch_attention_prepare_metadata.register_fake
def _prepare_fake(position_ids, seq_len, input_pos, cu_seqlen, cache_loc, cu_num_pages, pages_per_seq, page_size,
                  max_pages_per_seq):
    T, B = position_ids.shape[-1], seq_len.shape[0]
    new = position_ids.new_empty
    return (new(B, max_pages_per_seq, dtype=torch.long), new(T, dtype=torch.long), new(T, dtype=torch.long),
            new(T, dtype=torch.long))


def _write_slots(cache: torch.Tensor, slots: torch.Tensor, x: torch.Tensor) -> None:
    """cache[slots] = x, in the cache's dtype (fp8 goes through a byte view: CPU has no fp8 index_copy)."""
    x = x.to(cache.dtype)
    if cache.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        cache, x = cache.view(torch.uint8), x.view(torch.uint8)
    cache.index_copy_(0, slots, x)


def _scaled(x: torch.Tensor, cache: torch.Tensor, scale: float) -> torch.Tensor:
    # an FP8 cache stores x / scale within the e4m3 range; other caches store x
    if cache.dtype not in (torch.float8_e4m3fn, torch.float8_e5m2):
        return x
    return (x.float() / scale).clamp(-448.0, 448.0)


@torch.library.custom_op("auto_deploy::torch_attention_with_paged_cache", mutates_args=("k_cache", "v_cache"))
def torch_attention_with_paged_cache(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seq_len: torch.Tensor,
    input_pos: torch.Tensor,
    batch_info_host: torch.Tensor,
    page_table: torch.Tensor,
    slots: torch.Tensor,
    tok_seq: torch.Tensor,
    tok_pos: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    scale: Optional[float] = None,
    sinks: Optional[torch.Tensor] = None,
    sliding_window: Optional[int] = None,
    logit_cap: Optional[float] = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    alibi_slopes: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """q [1, T, n, d], k/v [1, T, n_kv, d(_v)] -> out [1, T, n, d_v]; writes k/v into the caches at `slots`.
    An FP8 cache holds k / k_scale and v / v_scale; reads multiply the scales back. alibi_slopes [n]: head h adds
    slopes[h] * (k_pos - q_pos) to its scores (positions in the sequence's cache)."""
    _, T, n, d = q.shape
    n_kv, dv = k.shape[2], v.shape[-1]
    B, ps = seq_len.shape[0], k_cache.shape[1]
    _write_slots(k_cache.view(-1, n_kv, d), slots, _scaled(k[0], k_cache, k_scale))
    _write_slots(v_cache.view(-1, n_kv, dv), slots, _scaled(v[0], v_cache, v_scale))

    ip = input_pos.long()
    if T == B:  # decode-only: one query per sequence
        qb = q[0].unsqueeze(1)  # [B, 1, n, d]
        q_pos = ip.unsqueeze(1)  # [B, 1]
    else:  # pad the queries per sequence: [B, S, n, d]
        S = int(batch_info_host[5])
        local = tok_pos - ip[tok_seq]
        qb = q.new_zeros(B, S, n, d)
        qb[tok_seq, local] = q[0]
        q_pos = ip.unsqueeze(1) + torch.arange(S, device=q.device)
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        num_pages = page_table.shape[1]  # static: every page a sequence may own
    else:
        num_pages = min(-(-int(batch_info_host[6]) // ps), page_table.shape[1])
    pt = page_table[:, :num_pages]
    L = num_pages * ps
    # index_select, not k_cache[pt]: advanced indexing takes a slow parallel path on small CPU tensors
    keys = k_cache.index_select(0, pt.reshape(-1)).reshape(B, L, n_kv, d).to(torch.float32)
    vals = v_cache.index_select(0, pt.reshape(-1)).reshape(B, L, n_kv, dv).to(torch.float32)
    if k_cache.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        keys, vals = keys * k_scale, vals * v_scale

    g = n // n_kv  # query heads per kv head: head h reads kv head h // g
    S = qb.shape[1]
    qg = qb.float().reshape(B, S, n_kv, g, d).permute(0, 2, 3, 1, 4)  # [B, n_kv, g, S, d]
    scores = qg @ keys.permute(0, 2, 1, 3).unsqueeze(2).transpose(-1, -2)  # [B, n_kv, g, S, L]
    scores = scores * (d ** -0.5 if scale is None else scale)
    if logit_cap is not None and logit_cap > 0:
        scores = logit_cap * torch.tanh(scores / logit_cap)
    k_pos = torch.arange(L, device=q.device)
    if alibi_slopes is not None:  # [B, n_kv, g, S, L]
        dist = (k_pos.view(1, 1, L) - q_pos.unsqueeze(-1)).float()  # [B, S, L]
        scores = scores + alibi_slopes.float().view(1, n_kv, g, 1, 1) * dist[:, None, None]
    visible = k_pos.view(1, 1, L) <= q_pos.unsqueeze(-1)  # [B, S, L]
    if sliding_window is not None and sliding_window > 0:
        visible = visible & ((q_pos.unsqueeze(-1) - k_pos.view(1, 1, L)) < sliding_window)
    scores = scores.masked_fill(~visible[:, None, None], float("-inf"))
    if sinks is not None:
        sink = sinks.float().view(1, n_kv, g, 1, 1).expand(B, n_kv, g, S, 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)
    out = probs @ vals.permute(0, 2, 1, 3).unsqueeze(2)  # [B, n_kv, g, S, dv]
    out = out.permute(0, 3, 1, 2, 4).reshape(B, S, n, dv).to(q.dtype)
    if T == B:
        return out.reshape(1, T, n, dv)
    return out[tok_seq, tok_pos - ip[tok_seq]].unsqueeze(0)


@torch_attention_with_paged_cache.register_fake
def _cached_fake(q, k, v, seq_len, input_pos, batch_info_host, page_table, slots, tok_seq, tok_pos, k_cache, v_cache,
                 scale=None, sinks=None, sliding_window=None, logit_cap=None, k_scale=1.0, v_scale=1.0,
                 alibi_slopes=None):
    return q.new_empty(*q.shape[:-1], v.shape[-1])


@register_attention_backend("torch")
class TorchPagedAttention(AttentionDescriptor):
    """Plain-torch paged attention (any device, any dtype); the reference for the other backends."""

    layout = "bsnd"
    supports_alibi = True
    metadata_fields = ("seq_len", "input_pos", "batch_info_host")

    @classmethod
    def cached_op(cls):
        return torch.ops.auto_deploy.torch_attention_with_paged_cache.default

    @classmethod
    def constants(cls, attn: AttentionNodeInfo) -> list:
        return [*super().constants(attn), *attn.kv_scale_constants()]

    @classmethod
    def prepare_metadata(cls, cache_config: CacheConfig) -> PrepareMetadata:
        return PrepareMetadata(
            op=torch.ops.auto_deploy.torch_attention_prepare_metadata.default,
            fields=("position_ids", "seq_len", "input_pos", "cu_seqlen", "cache_loc", "cu_num_pages", "pages_per_seq"),
            num_outputs=4,
            constants=(cache_config.page_size, cache_config.max_pages_per_seq),
        )
