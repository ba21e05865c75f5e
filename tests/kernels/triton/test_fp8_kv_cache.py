"""FP8 KV cache with per-layer k/v scales: the triton (and, on a GPU, flashinfer) cached attention ops against the
torch backend's, step by step through the same SequenceInfo (cached prefixes written by a first step)."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.ops.batch import SequenceInfo

PS = 4
FP8 = torch.float8_e4m3fn
MIXED = [(0, 7), (5, 3), (9, 1), (0, 1)]  # (cached prefix, new tokens): prefill, chunked prefill, decode
DECODE = [(6, 1), (13, 1), (1, 1)]


def _ops(backend: str):
    import kernels.torch.attention  # noqa: F401 - registers the ops
    if backend == "triton":
        import kernels.triton.backend  # noqa: F401
    if backend == "flashinfer":
        import kernels.flashinfer.backend  # noqa: F401
    return torch.ops.auto_deploy


def run(backend, seqs, k_scale, v_scale, n=4, n_kv=2, d=16, dtype=torch.float32, device="cpu", seed=0,
        cache_dtype=FP8, magnitude=3.0):
    """Output of the second step (new tokens) of `seqs`, and the caches, with `backend`'s cached op."""
    ad = _ops(backend)
    g = torch.Generator().manual_seed(seed)
    info = SequenceInfo(max_batch_size=len(seqs), max_seq_len=max(p + s for p, s in seqs) + PS,
                        max_num_tokens=max(256, sum(p + s for p, s in seqs)),
                        page_size=PS, device=torch.device(device))
    pages_per = [-(-(p + s) // PS) for p, s in seqs]
    perm = torch.randperm(sum(pages_per) + 2, generator=g).tolist()
    pages, start = [], 0
    for count in pages_per:
        pages.append(perm[start:start + count])
        start += count
    k_cache = torch.zeros(len(perm), PS, n_kv, d, dtype=cache_dtype, device=device)
    v_cache = torch.zeros_like(k_cache)
    # k and v of `magnitude`, q of 9 / magnitude: the same score range at every magnitude
    full = [tuple(torch.randn(p + s, h, d, generator=g).to(device, dtype) * m
                  for h, m in ((n, 9.0 / magnitude), (n_kv, magnitude), (n_kv, magnitude))) for p, s in seqs]

    def step(parts, input_pos, num_prefill):
        q, k, v = (torch.cat([full[b][i][a:e] for b, (a, e) in parts])[None] for i in range(3))
        owned = [pages[b][: -(-e // PS)] for b, (_, e) in parts]
        info.set_batch([[0] * (e - a) for _, (a, e) in parts], input_pos, owned, num_prefill=num_prefill)
        arg = info.arg
        base = (arg("position_ids"), arg("seq_len"), arg("input_pos"), arg("cu_seqlen"), arg("cache_loc"),
                arg("cu_num_pages"))
        consts = (None, None, None, None, k_scale, v_scale)
        if backend == "torch":
            meta = ad.torch_attention_prepare_metadata(*base, arg("pages_per_seq"), PS, info.max_pages_per_seq)
            return ad.torch_attention_with_paged_cache(q, k, v, arg("seq_len"), arg("input_pos"),
                                                       arg("batch_info_host"), *meta, k_cache, v_cache, *consts)
        if backend == "triton":
            slots = ad.triton_attention_prepare_metadata(*base, PS)
        else:
            slots = ad.flashinfer_attention_prepare_metadata(*base, arg("cu_seqlen_host"), arg("cu_num_pages_host"),
                                                             arg("last_page_len_host"), PS)
        op = getattr(ad, f"{backend}_attention_with_paged_cache")
        return op(q, k, v, *base[1:], slots, k_cache, v_cache, *consts)

    prefixes = [(b, (0, p)) for b, (p, _) in enumerate(seqs) if p > 0]
    if prefixes:
        step(prefixes, [0] * len(prefixes), len(prefixes))
    parts = [(b, (p, p + s)) for b, (p, s) in enumerate(seqs)]
    out = step(parts, [p for p, _ in seqs], sum(1 for p, s in seqs if not (s == 1 and p > 0)))
    return out[0], k_cache, v_cache, full


def _rel(a, b):
    return ((a.float().cpu() - b.float().cpu()).norm() / b.float().cpu().norm()).item()


@pytest.mark.parametrize("seqs", [MIXED, DECODE])
def test_triton_fp8_kv_matches_the_torch_backend(device, seqs):
    ref, kr, vr, full = run("torch", seqs, 0.05, 0.02, device=device)
    out, kt, vt, _ = run("triton", seqs, 0.05, 0.02, device=device)
    assert torch.equal(kt.view(torch.uint8).cpu(), kr.view(torch.uint8).cpu())  # the same e4m3 bytes
    assert torch.equal(vt.view(torch.uint8).cpu(), vr.view(torch.uint8).cpu())
    assert _rel(out, ref) < 1e-5


def test_scales_are_what_the_cache_holds(device):
    _, k_cache, _, full = run("triton", [(0, 5)], 0.05, 0.02, device=device)
    k = full[0][1]
    flat = k_cache.reshape(-1, *k_cache.shape[2:]).float().cpu() * 0.05
    written = flat[flat.abs().sum((1, 2)) > 0]
    torch.testing.assert_close(written, (k / 0.05).clamp(-448, 448).to(FP8).float().cpu() * 0.05, rtol=0, atol=0)
    # values beyond e4m3's 448 clamp with a unit scale; the layer's scale keeps them
    big = dict(device=device, magnitude=300.0)
    ref, *_ = run("torch", [(0, 5)], 1.0, 1.0, cache_dtype=torch.float32, **big)
    unit, *_ = run("triton", [(0, 5)], 1.0, 1.0, **big)
    scaled, *_ = run("triton", [(0, 5)], 3.0, 3.0, **big)
    assert _rel(scaled, ref) < 0.05 < _rel(unit, ref)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["triton", "flashinfer"])
@pytest.mark.parametrize("seqs", [[(0, 100), (50, 33), (300, 1)], [(0, 1), (17, 1), (1000, 1), (255, 1)]])
def test_gpu_fp8_kv_8b_heads(backend, seqs):
    kw = dict(n=32, n_kv=8, d=128, dtype=torch.bfloat16, device="cuda")
    ref, kr, vr, _ = run("torch", seqs, 0.05, 0.03, **kw)
    out, kt, vt, _ = run(backend, seqs, 0.05, 0.03, **kw)
    assert torch.equal(kt.view(torch.uint8), kr.view(torch.uint8))
    assert _rel(out, ref) < 2e-2
