"""A random paged MLA batch (ragged sequences, cached prefixes, shuffled pages) and its torch_mla reference."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autodeploy_cli.ops import load_ops


@dataclass
class MLABatch:
    q_nope: torch.Tensor  # [T, n, nope]
    q_pe: torch.Tensor  # [T, n, rope]
    ckv: torch.Tensor  # [T, r] this step's latents
    kpe: torch.Tensor  # [T, rope]
    weight: torch.Tensor  # kv_b_proj [n * (nope + v), r]
    ckv_cache: torch.Tensor  # [pages, ps, r]: prefixes filled, this step's rows NOT yet written
    kpe_cache: torch.Tensor  # [pages, ps, rope]
    ckv_full: list  # per sequence [kv_len, r] (prefix + this step)
    kpe_full: list
    seq_len: torch.Tensor
    input_pos: torch.Tensor
    cu_seqlen: torch.Tensor
    cache_loc: torch.Tensor
    cu_num_pages: torch.Tensor
    page_size: int

    @property
    def kv_len_host(self) -> torch.Tensor:
        return (self.input_pos + self.seq_len).cpu()


def make_mla_batch(seqs, n=4, nope=16, rope=8, r=32, v=16, page_size=4, dtype=torch.float32, device="cpu", seed=0,
                   spare_pages=3) -> MLABatch:
    """seqs: list of (input_pos, seq_len). Pages are handed out in a random order, with unused spares."""
    g = torch.Generator().manual_seed(seed)
    pages_per = [-(-(p + s) // page_size) for p, s in seqs]
    num_pages = sum(pages_per) + spare_pages
    perm = torch.randperm(num_pages, generator=g)
    ckv_cache = torch.randn(num_pages, page_size, r, generator=g)  # junk everywhere first
    kpe_cache = torch.randn(num_pages, page_size, rope, generator=g)
    T = sum(s for _, s in seqs)
    q_nope, q_pe = torch.randn(T, n, nope, generator=g), torch.randn(T, n, rope, generator=g)
    ckv, kpe = torch.randn(T, r, generator=g), torch.randn(T, rope, generator=g)
    weight = torch.randn(n * (nope + v), r, generator=g) / r ** 0.5
    cache_loc, ckv_full, kpe_full, tok, page = [], [], [], 0, 0
    for (pos, s), npg in zip(seqs, pages_per):
        pages = perm[page:page + npg]
        page += npg
        cache_loc += pages.tolist()
        cp, kp = torch.randn(pos, r, generator=g), torch.randn(pos, rope, generator=g)
        for i in range(pos):
            ckv_cache[pages[i // page_size], i % page_size] = cp[i]
            kpe_cache[pages[i // page_size], i % page_size] = kp[i]
        ckv_full.append(torch.cat([cp, ckv[tok:tok + s]]).to(dtype).float())
        kpe_full.append(torch.cat([kp, kpe[tok:tok + s]]).to(dtype).float())
        tok += s
    i32 = dict(dtype=torch.int32, device=device)
    cu, cup = [0], [0]
    for (_, s), npg in zip(seqs, pages_per):
        cu.append(cu[-1] + s)
        cup.append(cup[-1] + npg)
    to = dict(dtype=dtype, device=device)
    return MLABatch(
        q_nope=q_nope.to(**to), q_pe=q_pe.to(**to), ckv=ckv.to(**to), kpe=kpe.to(**to), weight=weight.to(**to),
        ckv_cache=ckv_cache.to(**to), kpe_cache=kpe_cache.to(**to), ckv_full=ckv_full, kpe_full=kpe_full,
        seq_len=torch.tensor([s for _, s in seqs], **i32), input_pos=torch.tensor([p for p, _ in seqs], **i32),
        cu_seqlen=torch.tensor(cu, **i32), cache_loc=torch.tensor(cache_loc, **i32),
        cu_num_pages=torch.tensor(cup, **i32), page_size=page_size)


def reference(b: MLABatch, scale: float) -> torch.Tensor:
    """Per-sequence torch_mla (float32, expanded K/V, causal bottom-right) over prefix + new tokens -> [T, n, v]."""
    load_ops()
    outs, tok = [], 0
    w = b.weight.float().cpu()
    for i, s in enumerate(b.seq_len.tolist()):
        qn = b.q_nope[tok:tok + s].float().cpu()[None]
        qp = b.q_pe[tok:tok + s].float().cpu()[None]
        out = torch.ops.auto_deploy.torch_mla(qn, qp, b.ckv_full[i][None], b.kpe_full[i][None, :, None], w, True,
                                              scale, "bsnd")
        outs.append(out[0])
        tok += s
    return torch.cat(outs)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float().cpu() - b.float().cpu()).norm() / b.float().cpu().norm()).item()
