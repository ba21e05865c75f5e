"""The torch backend's paged cached attention vs the canonical torch_attention on the same keys (fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.ops.attention import torch_attention
from autodeploy_cli.ops.batch import SequenceInfo
from kernels.torch.attention import torch_attention_prepare_metadata, torch_attention_with_paged_cache

N, N_KV, D, PS = 4, 2, 8, 4


def run_step(seqs, sliding_window=None, logit_cap=None, sinks=None, seed=0, alibi_slopes=None):
    """seqs: list of (cached_len, new_len). Fills the cached prefixes through earlier steps' writes, then compares the
    new tokens' outputs with torch_attention over the full keys of each sequence."""
    g = torch.Generator().manual_seed(seed)
    max_len = max(p + s for p, s in seqs)
    info = SequenceInfo(max_batch_size=len(seqs), max_seq_len=max_len + PS, max_num_tokens=256, page_size=PS)
    pages_per = [-(-(p + s) // PS) for p, s in seqs]
    perm = torch.randperm(sum(pages_per) + 2, generator=g).tolist()  # scattered page ids, two spare
    pages, start = [], 0
    for n in pages_per:
        pages.append(perm[start:start + n])
        start += n
    k_cache = torch.randn(len(perm), PS, N_KV, D, generator=g)  # junk where nothing was written
    v_cache = torch.randn(len(perm), PS, N_KV, D, generator=g)
    full = [(torch.randn(p + s, N, D, generator=g), torch.randn(p + s, N_KV, D, generator=g),
             torch.randn(p + s, N_KV, D, generator=g)) for p, s in seqs]

    def step(parts, input_pos, num_prefill):
        q = torch.cat([full[b][0][a:e] for b, (a, e) in parts])[None]
        k = torch.cat([full[b][1][a:e] for b, (a, e) in parts])[None]
        v = torch.cat([full[b][2][a:e] for b, (a, e) in parts])[None]
        toks = [[0] * (e - a) for _, (a, e) in parts]
        owned = [pages[b][: -(-e // PS)] for b, (_, e) in parts]  # exactly the pages covering the tokens so far
        info.set_batch(toks, input_pos, owned, num_prefill=num_prefill)
        a = {n: info.arg(n) for n in ("position_ids", "seq_len", "input_pos", "cu_seqlen", "cache_loc",
                                      "cu_num_pages", "pages_per_seq")}
        meta = torch_attention_prepare_metadata(*a.values(), PS, info.max_pages_per_seq)
        return torch_attention_with_paged_cache(q, k, v, a["seq_len"], a["input_pos"], info.arg("batch_info_host"),
                                                *meta, k_cache, v_cache, None, sinks, sliding_window, logit_cap,
                                                alibi_slopes=alibi_slopes)

    prefixes = [(b, (0, p)) for b, (p, _) in enumerate(seqs) if p > 0]
    if prefixes:  # write the cached prefixes with a first step
        step(prefixes, [0] * len(prefixes), len(prefixes))
    parts = [(b, (p, p + s)) for b, (p, s) in enumerate(seqs)]
    num_prefill = sum(1 for p, s in seqs if not (s == 1 and p > 0))
    out = step(parts, [p for p, _ in seqs], num_prefill)[0]
    ref = torch.cat([
        torch_attention(full[b][0][None, p:], full[b][1][None], full[b][2][None], None, 0.0, True, None, sinks,
                        sliding_window, logit_cap, "bsnd", alibi_slopes)[0]
        for b, (p, _) in enumerate(seqs)])
    return out, ref


@pytest.mark.parametrize("seqs", [
    [(0, 9)],                       # one prefill crossing two page boundaries
    [(0, 3), (0, 8), (0, 1)],       # ragged prefills, one of a single token
    [(5, 1), (12, 1), (3, 1)],      # decode-only batch (T == B path)
    [(0, 6), (7, 4), (9, 1)],       # mixed: prefill, chunk after a cached prefix, decode
])
def test_matches_torch_attention(seqs):
    out, ref = run_step(seqs)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seqs", [[(0, 9), (10, 1)], [(6, 3), (2, 1)]])
def test_window_softcap_sinks(seqs):
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0])
    alibi = torch.tensor([0.5, 0.25, 0.125, 0.0625])
    for kw in (dict(sliding_window=3), dict(logit_cap=5.0), dict(sinks=sinks), dict(alibi_slopes=alibi),
               dict(alibi_slopes=alibi, sliding_window=3)):
        out, ref = run_step(seqs, **kw)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_writes_new_kv_into_pages():
    info = SequenceInfo(max_batch_size=1, max_seq_len=16, max_num_tokens=16, page_size=PS)
    k_cache = torch.zeros(3, PS, N_KV, D)
    v_cache = torch.zeros(3, PS, N_KV, D)
    info.set_batch([[0] * 6], [0], [[2, 0]], num_prefill=1)  # tokens 0-3 -> page 2, tokens 4-5 -> page 0
    k = torch.arange(6.0).view(1, 6, 1, 1).expand(1, 6, N_KV, D).contiguous()
    a = [info.arg(n) for n in ("position_ids", "seq_len", "input_pos", "cu_seqlen", "cache_loc", "cu_num_pages",
                               "pages_per_seq")]
    meta = torch_attention_prepare_metadata(*a, PS, info.max_pages_per_seq)
    assert meta[1].tolist() == [8, 9, 10, 11, 0, 1]  # slots = page * page_size + offset
    torch_attention_with_paged_cache(torch.zeros(1, 6, N, D), k, k, a[1], a[2], info.arg("batch_info_host"), *meta,
                                     k_cache, v_cache)
    assert k_cache[2, :, 0, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert k_cache[0, :, 0, 0].tolist() == [4.0, 5.0, 0.0, 0.0]
    assert k_cache[1].abs().sum() == 0  # a page nobody owns is untouched
