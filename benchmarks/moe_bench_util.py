"""Helpers of benchmarks/moe_bench.py that hold no state: the copy bandwidth, one MoE layer's random inputs, a
torch._grouped_mm MoE for comparison, timing (optionally from a CUDA graph) and the error against a reference."""

from __future__ import annotations

import torch

def copy_bandwidth() -> float:
    from triton.testing import do_bench

    a = torch.empty(1 << 30, dtype=torch.float32, device="cuda").normal_()
    b = torch.empty_like(a)
    ms = do_bench(lambda: b.copy_(a), warmup=25, rep=200, return_mode="median")
    del a, b
    return 2 * (1 << 30) * 4 / ms * 1e3  # bytes/s, read + write


# --- kernels --------------------------------------------------------------------------------------------------
def layer(shape: dict, tokens: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    bf = dict(device="cuda", dtype=torch.bfloat16)
    n, h, i, k = shape["experts"], shape["hidden"], shape["inter"], shape["top_k"]
    w13 = torch.randn(n, 2 * i, h, generator=g, **bf) / h ** 0.5
    w2 = torch.randn(n, h, i, generator=g, **bf) / i ** 0.5
    x = torch.randn(tokens, h, generator=g, **bf)
    weights, ids = torch.topk(torch.softmax(torch.randn(tokens, n, generator=g, device="cuda"), -1), k)
    return x, ids, weights / weights.sum(-1, keepdim=True), w13, w2


def grouped_mm_moe(x, ids, weights, w13, w2):
    """A sync-free MoE over torch._grouped_mm: pairs sorted by expert, offsets from a histogram, two grouped GEMMs."""
    t, k = ids.shape
    n, inter = w13.shape[0], w2.shape[2]
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    tok = order // k
    counts = torch.histc(flat.float(), bins=n, min=0, max=n - 1)
    offs = torch.cumsum(counts, 0).to(torch.int32)
    gu = torch._grouped_mm(x[tok], w13.transpose(1, 2), offs=offs)
    a = torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:]
    y = torch._grouped_mm(a, w2.transpose(1, 2), offs=offs).float() * weights.reshape(-1)[order, None]
    return torch.zeros(t, x.shape[1], device=x.device, dtype=torch.float32).index_add_(0, tok, y).to(x.dtype)


def _time(fn, graph: bool) -> float:
    """Median ms per call: replayed from a CUDA graph (what a captured decode step pays) or eager."""
    from triton.testing import do_bench, do_bench_cudagraph

    fn()
    torch.cuda.synchronize()
    if graph:
        return do_bench_cudagraph(fn, rep=100, return_mode="median")
    return do_bench(fn, warmup=10, rep=100, return_mode="median")


def _err(out, ref) -> float:
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


QWEN_TINY = dict(name="tiny", experts=8, top_k=2, hidden=32, inter=16, layers=1)


def layer_cpu(shape: dict, tokens: int):
    g = torch.Generator().manual_seed(0)
    n, h, i, k = shape["experts"], shape["hidden"], shape["inter"], shape["top_k"]
    weights, ids = torch.topk(torch.softmax(torch.randn(tokens, n, generator=g), -1), k)
    return (torch.randn(tokens, h, generator=g), ids, weights, torch.randn(n, 2 * i, h, generator=g) / h ** 0.5,
            torch.randn(n, h, i, generator=g) / i ** 0.5)


