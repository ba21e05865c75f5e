"""GPU kernel benchmark: copy bandwidth, Triton vs FlashInfer paged decode/prefill attention, pointwise kernels.

Run on the GPU machine: python3 benchmarks/kernel_bench.py --out results.json
Every number is a triton.testing.do_bench median (ms) with the conditions printed next to it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernels.triton import activation, norm, rope  # noqa: E402
from kernels.triton import attention as ta  # noqa: E402

RES: dict = {}


def save(path):
    Path(path).write_text(json.dumps(RES, indent=1, default=str))


def bench(fn, rep=200):
    return do_bench(fn, warmup=25, rep=rep, return_mode="median")


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def paged(B, ctx, n=32, n_kv=8, d=128, ps=16, q_len=1, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    pages_per = math.ceil(ctx / ps)
    P = B * pages_per
    kc = torch.randn(P, ps, n_kv, d, device="cuda", dtype=dtype, generator=g)
    vc = torch.randn(P, ps, n_kv, d, device="cuda", dtype=dtype, generator=g)
    loc = torch.randperm(P, device="cuda", generator=g).int()
    i32 = dict(dtype=torch.int32, device="cuda")
    seq_len = torch.full((B,), q_len, **i32)
    input_pos = torch.full((B,), ctx - q_len, **i32)
    cu = torch.arange(B + 1, **i32) * q_len
    cup = torch.arange(B + 1, **i32) * pages_per
    q = torch.randn(B * q_len, n, d, device="cuda", dtype=dtype, generator=g)
    last = torch.full((B,), (ctx - 1) % ps + 1, **i32)
    return dict(q=q, kc=kc, vc=vc, loc=loc, seq_len=seq_len, input_pos=input_pos, cu=cu, cup=cup, last=last, ps=ps)


def sec_facts():
    p = torch.cuda.get_device_properties(0)
    RES["facts"] = dict(gpu=p.name, sms=p.multi_processor_count, torch=torch.__version__, triton=triton.__version__,
                        cuda=torch.version.cuda)
    try:
        import flashinfer
        RES["facts"]["flashinfer"] = flashinfer.__version__
    except Exception as e:  # noqa: BLE001
        RES["facts"]["flashinfer"] = f"absent: {e}"


def sec_bandwidth():
    n = 1 << 31  # 4 GiB of bf16 ... 2^31 elements * 2 B
    a = torch.empty(n, dtype=torch.bfloat16, device="cuda").normal_()
    b = torch.empty_like(a)
    ms = bench(lambda: b.copy_(a), rep=300)
    RES["copy_GBps"] = 2 * a.numel() * 2 / ms / 1e6
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = bench(lambda: x @ y)
    RES["gemm_TFLOPs"] = 2 * 8192 ** 3 / ms / 1e9
    del a, b, x, y


def fi_decode(p, tc=True):
    import flashinfer
    ws = torch.zeros(128 << 20, dtype=torch.uint8, device="cuda")
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=tc)
    w.plan(p["cup"], p["loc"], p["last"], p["q"].shape[1], p["kc"].shape[2], p["q"].shape[2], p["ps"],
           q_data_type=p["q"].dtype, kv_data_type=p["q"].dtype)
    return lambda: w.run(p["q"], (p["kc"], p["vc"]))


def fi_prefill(p):
    import flashinfer
    ws = torch.zeros(128 << 20, dtype=torch.uint8, device="cuda")
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD")
    w.plan(p["cu"], p["cup"], p["loc"], p["last"], p["q"].shape[1], p["kc"].shape[2], p["q"].shape[2], p["ps"],
           causal=True, q_data_type=p["q"].dtype, kv_data_type=p["q"].dtype)
    return lambda: w.run(p["q"], (p["kc"], p["vc"]))


def tri_args(p):
    return (p["q"], p["kc"], p["vc"], p["seq_len"], p["input_pos"], p["cu"], p["loc"], p["cup"])


def sec_decode(B, ctx, tag, ps=16, sweep_space=((32, 64, 128), (4, 8), (2, 3), (1, 2, 4, 8))):
    p = paged(B, ctx, ps=ps)
    kv_bytes = 2 * B * ctx * 8 * 128 * 2
    out = {"B": B, "ctx": ctx, "page": ps, "heads": "32/8x128", "kv_MB": kv_bytes / 1e6,
           "floor_us": kv_bytes / (RES.get("copy_GBps", 4230) * 1e9) * 1e6}
    ref = None
    try:
        f = fi_decode(p, tc=True)
        ref = f()
        out["flashinfer_tc_us"] = bench(f) * 1e3
        out["flashinfer_cuda_core_us"] = bench(fi_decode(p, tc=False)) * 1e3
    except Exception as e:  # noqa: BLE001
        out["flashinfer_error"] = repr(e)[:300]
    sweep = []
    for bn in sweep_space[0]:
        for warps in sweep_space[1]:
            for stages in sweep_space[2]:
                for splits in sweep_space[3]:
                    try:
                        fn = lambda: ta.decode_attention(*tri_args(p), num_splits=splits, block_n=bn,  # noqa: E731
                                                         num_warps=warps, num_stages=stages)
                        o = fn()
                        e = rel(o, ref) if ref is not None else None
                        sweep.append(dict(block_n=bn, warps=warps, stages=stages, splits=splits,
                                          us=bench(fn, rep=100) * 1e3, rel_err_vs_fi=e))
                    except Exception as ex:  # noqa: BLE001
                        sweep.append(dict(block_n=bn, warps=warps, stages=stages, splits=splits, error=repr(ex)[:200]))
    ok = [s for s in sweep if "us" in s]
    out["triton_best"] = min(ok, key=lambda s: s["us"]) if ok else None
    o = ta.decode_attention(*tri_args(p))
    out["triton_default_us"] = bench(lambda: ta.decode_attention(*tri_args(p))) * 1e3
    out["triton_default_splits"] = ta.decode_num_splits(B, 8, p["kc"].shape[0] * ps // B)
    out["triton_default_rel_err_vs_fi"] = rel(o, ref) if ref is not None else None
    out["sweep"] = sweep
    RES[tag] = out


def sec_prefill(B, L, tag):
    p = paged(B, L, q_len=L)
    flops = 4 * B * 32 * 128 * L * L / 2
    out = {"B": B, "L": L}
    ref = None
    try:
        f = fi_prefill(p)
        ref = f()
        ms = bench(f)
        out["flashinfer_ms"], out["flashinfer_TFLOPs"] = ms, flops / ms / 1e9
    except Exception as e:  # noqa: BLE001
        out["flashinfer_error"] = repr(e)[:300]
    sweep = []
    for bm, bn, warps, stages in [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 4, 2),
                                  (128, 128, 8, 2), (64, 32, 4, 3)]:
        try:
            fn = lambda: ta.prefill_attention(*tri_args(p), block_m=bm, block_n=bn, num_warps=warps,  # noqa: E731
                                              num_stages=stages)
            o = fn()
            ms = bench(fn, rep=100)
            sweep.append(dict(block_m=bm, block_n=bn, warps=warps, stages=stages, ms=ms, TFLOPs=flops / ms / 1e9,
                              rel_err_vs_fi=rel(o, ref) if ref is not None else None))
        except Exception as ex:  # noqa: BLE001
            sweep.append(dict(block_m=bm, block_n=bn, warps=warps, stages=stages, error=repr(ex)[:200]))
    out["sweep"] = sweep
    q = p["q"].view(B, L, 32, 128).transpose(1, 2)
    k = torch.randn(B, 8, L, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    ms = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    out["sdpa_contiguous_ms"] = ms
    RES[tag] = out


def sec_pointwise():
    out = {}
    for T in (1, 1024):
        x = torch.randn(T, 4096, device="cuda", dtype=torch.bfloat16)
        r = torch.randn_like(x)
        w = torch.randn(4096, device="cuda", dtype=torch.bfloat16)

        def eager_norm(x=x, w=w):
            xf = x.float()
            return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype)

        out[f"rmsnorm_T{T}"] = dict(triton_us=bench(lambda: norm.rmsnorm(x, w, 1e-5)) * 1e3,
                                    eager_us=bench(eager_norm) * 1e3)
        out[f"add_rmsnorm_T{T}"] = dict(triton_us=bench(lambda: norm.add_rmsnorm(x, r, w, 1e-5)) * 1e3,
                                        eager_us=bench(lambda: eager_norm(x + r)) * 1e3)
        g = torch.randn(T, 2 * 14336, device="cuda", dtype=torch.bfloat16)
        out[f"silu_mul_T{T}"] = dict(
            triton_us=bench(lambda: activation.silu_and_mul(g)) * 1e3,
            eager_us=bench(lambda: torch.nn.functional.silu(g[:, :14336]) * g[:, 14336:]) * 1e3)
        q = torch.randn(T, 32, 128, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(T, 8, 128, device="cuda", dtype=torch.bfloat16)
        pos = torch.arange(T, device="cuda")
        inv = 1.0 / (500000 ** (torch.arange(0, 128, 2, device="cuda").float() / 128))
        cache = rope.build_cos_sin_cache(inv, 8192)
        out[f"rope_T{T}"] = dict(triton_us=bench(lambda: rope.rope_qk(q, k, pos, cache)) * 1e3)
    RES["pointwise"] = out


def sec_write():
    p = paged(64, 1024)
    k = torch.randn(64, 8, 128, device="cuda", dtype=torch.bfloat16)
    slots = ta.slot_mapping(p["seq_len"], p["input_pos"], p["cu"], p["loc"], p["cup"], 16, 64)
    RES["kv_write_B64_us"] = bench(lambda: ta.write_kv_cache(k, k, p["kc"], p["vc"], slots)) * 1e3
    RES["slot_mapping_B64_us"] = bench(lambda: ta.slot_mapping(p["seq_len"], p["input_pos"], p["cu"], p["loc"],
                                                               p["cup"], 16, 64)) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="kernel_bench.json")
    ap.add_argument("--sections", default="", help="comma-separated section names (default: all but long decode)")
    a = ap.parse_args()
    long_space = ((64, 128), (4, 8), (2, 3, 4), (1,))
    sections = [("decode256_p16", lambda: sec_decode(256, 1536, "decode_B256_ctx1536_p16", 16, long_space)),
                ("decode256_p64", lambda: sec_decode(256, 1536, "decode_B256_ctx1536_p64", 64, long_space))]
    wanted = set(filter(None, a.sections.split(",")))
    for name, fn in [(n, f) for n, f in sections if n in wanted] + [(n, f) for n, f in [("facts", sec_facts), ("bandwidth", sec_bandwidth),
                     ("decode64", lambda: sec_decode(64, 1024, "decode_B64_ctx1024")),
                     ("decode1", lambda: sec_decode(1, 384, "decode_B1_ctx384")),
                     ("prefill1", lambda: sec_prefill(1, 1024, "prefill_1x1024")),
                     ("prefill16", lambda: sec_prefill(16, 2048, "prefill_16x2048")),
                     ("pointwise", sec_pointwise), ("write", sec_write)] if not wanted or n in wanted]:
        t0 = time.time()
        try:
            fn()
        except Exception:  # noqa: BLE001
            RES[f"{name}_error"] = traceback.format_exc()[-1500:]
        print(f"[{name}] {time.time() - t0:.1f}s", flush=True)
        save(a.out)
    # short table last
    for tag in ("decode_B64_ctx1024", "decode_B1_ctx384", "decode_B256_ctx1536_p16", "decode_B256_ctx1536_p64"):
        d = RES.get(tag, {})
        print(tag, {k: d.get(k) for k in ("floor_us", "flashinfer_tc_us", "flashinfer_cuda_core_us",
                                          "triton_default_us", "triton_default_splits")}, "best", d.get("triton_best"))
    for tag in ("prefill_1x1024", "prefill_16x2048"):
        d = RES.get(tag, {})
        best = min((s for s in d.get("sweep", []) if "ms" in s), key=lambda s: s["ms"], default=None)
        print(tag, "fi", d.get("flashinfer_ms"), "sdpa", d.get("sdpa_contiguous_ms"), "triton best", best)
    print("copy GB/s", RES.get("copy_GBps"), "gemm TFLOP/s", RES.get("gemm_TFLOPs"))
    print(json.dumps(RES.get("pointwise"), indent=0))
    print("kv write", RES.get("kv_write_B64_us"), "slot map", RES.get("slot_mapping_B64_us"))
    for k in RES:
        if k.endswith("_error"):
            print(k, RES[k])


if __name__ == "__main__":
    main()
