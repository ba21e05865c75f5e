"""Triton paged attention vs the torch reference: cache write, prefill with cached prefixes, decode (split-KV)."""

from __future__ import annotations

import pytest
import torch

from kernels.triton import attention as ta
from tests.kernels.triton.paged import make_batch, reference

MIXED = [(0, 7), (5, 3), (9, 1), (0, 1), (2, 6)]  # (cached prefix, new tokens): prefill, chunked, decode


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float().cpu() - b.float().cpu()).norm() / b.float().norm()).item()


def _write(b):
    slots = ta.slot_mapping(b.seq_len, b.input_pos, b.cu_seqlen, b.cache_loc, b.cu_num_pages, b.page_size,
                            b.q.shape[0])
    ta.write_kv_cache(b.k, b.v, b.k_cache, b.v_cache, slots)
    return slots


def test_slot_mapping_and_cache_write(device):
    b = make_batch(MIXED, device=device)
    slots = _write(b)
    pages = b.cache_loc.tolist()
    expected = []
    for i, (pos, s) in enumerate(zip(b.input_pos.tolist(), b.seq_len.tolist())):
        first = b.cu_num_pages[i].item()
        for j in range(s):
            p = pos + j
            expected.append(pages[first + p // b.page_size] * b.page_size + p % b.page_size)
    assert slots.tolist() == expected
    flat_k = b.k_cache.reshape(-1, *b.k_cache.shape[2:])
    assert torch.equal(flat_k[slots.long()].cpu(), b.k.cpu())
    # every row of every sequence (prefix and new) now reads back from its page
    for i, pos in enumerate(b.input_pos.tolist()):
        first = b.cu_num_pages[i].item()
        for p in range(pos + b.seq_len[i].item()):
            row = b.v_cache[pages[first + p // b.page_size], p % b.page_size].cpu()
            assert torch.equal(row, b.v_full[i][p])


def test_padding_slots_are_not_written(device):
    b = make_batch([(3, 2)], device=device)
    slots = ta.slot_mapping(b.seq_len, b.input_pos, b.cu_seqlen, b.cache_loc, b.cu_num_pages, b.page_size, 4)
    assert slots.tolist()[2:] == [-1, -1]
    before = b.k_cache.clone()
    k = torch.cat([b.k, torch.full_like(b.k, 7.0)])
    ta.write_kv_cache(k, k, b.k_cache, b.v_cache, slots)
    changed = (b.k_cache != before).any(-1).any(-1).sum().item()
    assert changed == 2  # two real tokens, nothing for the padding


ALIBI = torch.tensor([0.5, 0.25, 0.0625, 0.7, 0.3, 0.01])  # MPT/Bloom-like magnitudes, one per query head


def _opts(opts, b, device):
    kw = dict(opts)
    if kw.pop("sinks", False):
        kw["sinks"] = torch.randn(b.q.shape[1]).to(device)
    if kw.pop("alibi", False):
        kw["alibi_slopes"] = ALIBI[: b.q.shape[1]].to(device)
    return kw


@pytest.mark.parametrize("opts", [{}, {"sliding_window": 3}, {"logit_cap": 2.0}, {"scale": 0.3}, {"sinks": True},
                                  {"alibi": True}, {"alibi": True, "sliding_window": 4}])
def test_prefill_mixed_batch_matches_reference(device, opts):
    b = make_batch(MIXED, device=device, seed=1)
    _write(b)
    kw = _opts(opts, b, device)
    out = ta.prefill_attention(b.q, b.k_cache, b.v_cache, b.seq_len, b.input_pos, b.cu_seqlen, b.cache_loc,
                               b.cu_num_pages, block_m=16, block_n=16, **kw)
    assert _rel(out, reference(b, **kw)) < 1e-5


@pytest.mark.parametrize("splits", [1, 2, 4])
@pytest.mark.parametrize("opts", [{}, {"sliding_window": 5}, {"logit_cap": 1.5}, {"sinks": True}, {"alibi": True}])
def test_decode_matches_reference(device, splits, opts):
    b = make_batch([(0, 1), (6, 1), (13, 1), (30, 1)], n_heads=6, n_kv=2, device=device, seed=2)
    _write(b)
    kw = _opts(opts, b, device)
    out = ta.decode_attention(b.q, b.k_cache, b.v_cache, b.seq_len, b.input_pos, b.cu_seqlen, b.cache_loc,
                              b.cu_num_pages, num_splits=splits, block_n=16, **kw)
    assert _rel(out, reference(b, **kw)) < 1e-5


def test_decode_equals_prefill_path_for_one_token_sequences(device):
    b = make_batch([(4, 1), (11, 1)], device=device, seed=3)
    _write(b)
    args = (b.q, b.k_cache, b.v_cache, b.seq_len, b.input_pos, b.cu_seqlen, b.cache_loc, b.cu_num_pages)
    assert _rel(ta.decode_attention(*args, num_splits=2, block_n=16),
                ta.prefill_attention(*args, block_m=16, block_n=16)) < 1e-6


def test_decode_num_splits_fills_the_gpu():
    assert ta.decode_num_splits(64, 8, 1024) == 1  # 512 programs already ~4 per SM
    assert ta.decode_num_splits(1, 8, 4096) == 16
    assert ta.decode_num_splits(1, 8, 128) == 1  # short contexts are not split


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_8b_shapes(dtype):
    seqs = [(0, 300), (700, 129), (1000, 1), (64, 1), (0, 1)]
    b = make_batch(seqs, n_heads=32, n_kv=8, d=128, page_size=16, dtype=dtype, device="cuda", seed=4)
    _write(b)
    args = (b.q, b.k_cache, b.v_cache, b.seq_len, b.input_pos, b.cu_seqlen, b.cache_loc, b.cu_num_pages)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert _rel(ta.prefill_attention(*args), reference(b)) < tol
    d = make_batch([(p, 1) for p in (1, 17, 300, 1023, 2047)], n_heads=32, n_kv=8, d=128, page_size=16,
                   dtype=dtype, device="cuda", seed=5)
    _write(d)
    dargs = (d.q, d.k_cache, d.v_cache, d.seq_len, d.input_pos, d.cu_seqlen, d.cache_loc, d.cu_num_pages)
    assert _rel(ta.decode_attention(*dargs), reference(d)) < tol
    assert _rel(ta.decode_attention(*dargs, num_splits=8), reference(d)) < tol
    assert _rel(ta.decode_attention(*dargs, num_splits=1), reference(d)) < tol  # no reduce kernel
    # ALiBi at long contexts (Bloom's 2^-8i/n slopes): biases up to ~1000 in the log2-domain scores
    slopes = torch.pow(2.0, -8.0 * torch.arange(1, 33) / 32).cuda()
    assert _rel(ta.prefill_attention(*args, alibi_slopes=slopes), reference(b, alibi_slopes=slopes)) < tol
    assert _rel(ta.decode_attention(*dargs, num_splits=8, alibi_slopes=slopes),
                reference(d, alibi_slopes=slopes)) < tol
