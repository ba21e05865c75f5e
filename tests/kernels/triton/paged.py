"""Build a random paged batch (ragged sequences, cached prefixes, shuffled pages) and its torch reference."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autodeploy_cli.ops.attention import torch_attention


@dataclass
class PagedBatch:
    q: torch.Tensor  # [T, n, d]
    k: torch.Tensor  # [T, n_kv, d] this step's keys
    v: torch.Tensor
    k_cache: torch.Tensor  # [pages, ps, n_kv, d], prefixes filled, this step's rows NOT yet written
    v_cache: torch.Tensor
    k_full: list  # per sequence [kv_len, n_kv, d] (prefix + this step)
    v_full: list
    seq_len: torch.Tensor
    input_pos: torch.Tensor
    cu_seqlen: torch.Tensor
    cache_loc: torch.Tensor
    cu_num_pages: torch.Tensor
    page_size: int


def make_batch(seqs, n_heads=4, n_kv=2, d=16, page_size=4, dtype=torch.float32, device="cpu", seed=0,
               spare_pages=3) -> PagedBatch:
    """seqs: list of (input_pos, seq_len). Pages are handed out in a random order, with unused spares."""
    g = torch.Generator().manual_seed(seed)
    pages_per = [-(-(p + s) // page_size) for p, s in seqs]
    num_pages = sum(pages_per) + spare_pages
    perm = torch.randperm(num_pages, generator=g)
    k_cache = torch.randn(num_pages, page_size, n_kv, d, generator=g).to(dtype)  # junk everywhere first
    v_cache = torch.randn(num_pages, page_size, n_kv, d, generator=g).to(dtype)
    T = sum(s for _, s in seqs)
    q = torch.randn(T, n_heads, d, generator=g).to(dtype)
    k = torch.randn(T, n_kv, d, generator=g).to(dtype)
    v = torch.randn(T, n_kv, d, generator=g).to(dtype)
    cache_loc, k_full, v_full, tok, page = [], [], [], 0, 0
    for (pos, s), npg in zip(seqs, pages_per):
        pages = perm[page:page + npg]
        page += npg
        cache_loc += pages.tolist()
        kp = torch.randn(pos, n_kv, d, generator=g).to(dtype)
        vp = torch.randn(pos, n_kv, d, generator=g).to(dtype)
        for i in range(pos):  # write the cached prefix into its pages
            k_cache[pages[i // page_size], i % page_size] = kp[i]
            v_cache[pages[i // page_size], i % page_size] = vp[i]
        k_full.append(torch.cat([kp, k[tok:tok + s]]))
        v_full.append(torch.cat([vp, v[tok:tok + s]]))
        tok += s
    i32 = dict(dtype=torch.int32, device=device)
    seq_len = torch.tensor([s for _, s in seqs], **i32)
    cu = [0]
    for _, s in seqs:
        cu.append(cu[-1] + s)
    cup = [0]
    for n in pages_per:
        cup.append(cup[-1] + n)
    return PagedBatch(
        q=q.to(device), k=k.to(device), v=v.to(device), k_cache=k_cache.to(device), v_cache=v_cache.to(device),
        k_full=k_full, v_full=v_full, seq_len=seq_len, input_pos=torch.tensor([p for p, _ in seqs], **i32),
        cu_seqlen=torch.tensor(cu, **i32), cache_loc=torch.tensor(cache_loc, **i32),
        cu_num_pages=torch.tensor(cup, **i32), page_size=page_size)


def reference(batch: PagedBatch, scale=None, sinks=None, sliding_window=None, logit_cap=None,
              alibi_slopes=None) -> torch.Tensor:
    """Per-sequence torch_attention (fp32, causal bottom-right) over prefix + new keys -> [T, n, d]."""
    outs, tok = [], 0
    for i, s in enumerate(batch.seq_len.tolist()):
        q = batch.q[tok:tok + s].float().cpu()[None]
        k = batch.k_full[i].float()[None]
        v = batch.v_full[i].float()[None]
        outs.append(torch_attention(q, k, v, None, 0.0, True, scale, None if sinks is None else sinks.float().cpu(),
                                    sliding_window, logit_cap, "bsnd",
                                    None if alibi_slopes is None else alibi_slopes.float().cpu())[0])
        tok += s
    return torch.cat(outs)
