"""FP8 on one H200, Llama-3.1-8B shapes (random weights quantized on the fly), with the bf16 run beside it.

    python3 benchmarks/fp8_bench.py --out benchmarks/results/h200_fp8.json          # everything, ~5 GPU minutes
    python3 benchmarks/fp8_bench.py --out r.json --what kernels                      # only the kernel timings

Measures the targets of issue 16, each engine variant in its own process (run back to back on the same GPU):
  bs1    batch 1, prompt 128, 256 new tokens: decode tok/s (target >= 470 for FP8 weights) vs the floor =
         copy bandwidth / (weight bytes per step + KV bytes); bf16 beside it
  c64    64 requests of 1024/128, all in flight (concurrency 64): output tok/s, FP8 / bf16 ratio (target >= 1.6)
  n256   256 requests of 1024/1024: output tok/s with FP8 weights + FP8 KV cache (target >= 20,000)
  kv     KV-cache capacity in tokens of each variant (FP8 KV: 2x bf16 at the same memory)
  kernels single-token GEMVs (FP8 Triton, bf16 Triton, cuBLAS) at the 8B decode shapes with their prologues, and
         torch._scaled_mm (fast accumulation off / on, tensor- and row-wise) + the activation quantizer against
         bf16 cuBLAS at 64 .. 8192 tokens
Variants: bf16 (bf16 weights + KV), fp8 (per-channel FP8 weights, dynamic per-token activations, FP8 KV), fp8_fast
(the same with scaled_mm's fast accumulation). The fp8 variant also records a per-step kernel profile at batch 1 and
256 (the closing note's material when a target is missed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

VARIANTS = {
    "bf16": ([], ("bs1", "c64", "n256")),
    "fp8": (["quant_config.quant_algo=FP8", "kv_cache_config.dtype=fp8"], ("bs1", "c64", "n256", "prof")),
    "fp8_fast": (["quant_config.quant_algo=FP8", "kv_cache_config.dtype=fp8",
                  "transforms.fuse_fp8_linear.fast_accum=true"], ("c64", "n256")),
}
TARGETS = {"bs1_fp8_tok_s": 470, "n256_fp8_tok_s": 20000, "c64_ratio": 1.6}
BYTES_PER_STEP = {"bf16": 15.01e9, "fp8": 8.03e9}  # weights read per decode step (LM head bf16 in both)


# --- engine variants (one process each) ---------------------------------------------------------------------------
def _timed(engine, n: int, isl: int, osl: int, seed: int) -> dict:
    import engine_bench as eb

    eb.run(engine, eb.rand_prompts(n, 64, 3), 8)  # warm-up: every graph, the allocator
    s0 = dict(vars(engine.stats))
    dt = eb.run(engine, eb.rand_prompts(n, isl, seed), osl)
    s1 = vars(engine.stats)
    return dict(requests=n, isl=isl, osl=osl, wall_s=dt, output_tok_s=n * osl / dt, total_tok_s=n * (isl + osl) / dt,
                stats={k: s1[k] - s0[k] for k in s1 if isinstance(s1[k], (int, float))})


def run_variant(name: str, a: argparse.Namespace) -> dict:
    import engine_bench as eb

    overrides, parts = VARIANTS[name]
    # max_seq_len 8192: the pool (256 x 8192 tokens at most) is sized by memory, so FP8 KV shows its 2x capacity
    args = argparse.Namespace(layers=a.layers, max_seq_len=8192, page_size=a.page_size, attn=a.attn,
                              compile="torch-cudagraph", override=[*overrides, *a.override])
    res: dict = {"variant": name, "overrides": args.override}
    engine, build_s, _ = eb.build_engine(args, 256)
    report = engine.build_result.report
    res.update(build_s=build_s, kv_capacity_tokens=engine.iface.capacity_tokens, kv_pages=engine.iface.num_pages,
               quantization=report.get("quantization"), canonical_ops=report.get("canonical_ops"))
    if "bs1" in parts:
        eb.bench_bs1(engine, res)
    if "c64" in parts:
        res["c64"] = _timed(engine, 64, 1024, 128, 6)
    if "n256" in parts:
        res["n256"] = _timed(engine, 256, 1024, 1024, 4)
    if "prof" in parts:
        eb.profile_decode(engine, res, batch=1, steps=20)
        eb.profile_decode(engine, res, batch=256, steps=10, prompt=1024)
    return res


def spawn(name: str, a: argparse.Namespace) -> dict:
    """Run one variant in a fresh process (its memory, graphs and KV pool go away with it)."""
    out = Path(tempfile.mkdtemp()) / f"{name}.json"
    cmd = [sys.executable, __file__, "--variant", name, "--out", str(out), "--attn", a.attn, "--layers",
           str(a.layers), "--page-size", str(a.page_size), *[f"--override={o}" for o in a.override]]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    res = json.loads(out.read_text()) if out.is_file() else {"variant": name}
    res["process_s"] = time.perf_counter() - t0
    if proc.returncode != 0:
        res["error"] = (proc.stderr or proc.stdout)[-3000:]
    return res


# --- kernels --------------------------------------------------------------------------------------------------------
GEMV_SHAPES = {"qkv_add_norm": (6144, 4096, "add_norm"), "o_proj": (4096, 4096, None),
               "gate_up_add_norm": (28672, 4096, "add_norm"), "down_silu_mul": (4096, 14336, "silu_mul")}
GEMV_CONFIGS = [(4, 1024, 8), (8, 1024, 8), (16, 1024, 8), (8, 512, 4), (16, 512, 4), (32, 512, 8)]
GEMM_SHAPES = {"qkv": (6144, 4096), "o_proj": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
GEMM_TOKENS = (64, 256, 1024, 8192)


def _graph_us(fn, copies: int) -> float:
    from gemv_bench import graph_time_us

    return graph_time_us(fn, copies)


def bench_gemv(res: dict) -> None:
    from autodeploy_cli.ops.quant import quantize_weight
    from kernels.triton import activation, fp8_gemv, gemv, norm

    out = res.setdefault("gemv", {})
    bf = dict(device="cuda", dtype=torch.bfloat16)
    for name, (n, k, pro) in GEMV_SHAPES.items():
        sm, an = pro == "silu_mul", pro == "add_norm"
        copies = max(2, min(16, int(400e6 // (n * k * 2))))
        w16 = [torch.randn(n, k, **bf) / 64 for _ in range(copies)]
        w8 = [quantize_weight(w, "channel") for w in w16]
        x = torch.randn(1, 2 * k if sm else k, **bf)
        r, nw = torch.randn_like(x), torch.rand(k, **bf) + 0.5
        kw = dict(norm_weight=nw, residual=r, eps=1e-5) if an else {}

        def cublas(i):
            xin = activation.silu_and_mul(x) if sm else norm.add_rmsnorm(x, r, nw, 1e-5)[0] if an else x
            return torch.nn.functional.linear(xin, w16[i])

        row = {"N": n, "K": k, "prologue": pro, "cublas_bf16_us": _graph_us(cublas, copies),
               "triton_bf16_us": _graph_us(lambda i: gemv.gemv(x, w16[i], silu_mul=sm, **kw), copies),
               "fp8_default": fp8_gemv.config(n, k), "fp8": []}
        for cfg in dict.fromkeys([fp8_gemv.config(n, k), *GEMV_CONFIGS]):  # the default: bf16 activation
            us = _graph_us(lambda i: fp8_gemv.fp8_gemv(x, w8[i][0], w8[i][1], None, silu_mul=sm, cfg=cfg, **kw),
                           copies)
            row["fp8"].append({"cfg": cfg, "act_quant": False, "us": us, "TBps": n * k / us / 1e6})
        for scale in (None, torch.tensor(0.05, device="cuda")):  # exact mode: dynamic, static activation scale
            us = _graph_us(lambda i: fp8_gemv.fp8_gemv(x, w8[i][0], w8[i][1], scale, silu_mul=sm, act_quant=True,
                                                       **kw), copies)
            row["fp8"].append({"cfg": fp8_gemv.config(n, k), "act_quant": "static" if scale is not None else
                               "dynamic", "us": us, "TBps": n * k / us / 1e6})
        best = min((c for c in row["fp8"] if c["act_quant"] is False), key=lambda c: c["us"])
        row.update(fp8_best=best, floor_fp8_us=n * k / (res["copy_GBps"] * 1e3))
        out[name] = row
        print(name, {k_: v for k_, v in row.items() if k_ != "fp8"}, flush=True)
        del w16, w8
        torch.cuda.empty_cache()


def bench_gemm(res: dict) -> None:
    from triton.testing import do_bench

    from autodeploy_cli.ops.quant import quantize_weight
    from kernels.triton.fp8_quant import quantize_rows, scaled_mm

    out = res.setdefault("scaled_mm", {})
    bf = dict(device="cuda", dtype=torch.bfloat16)
    for name, (n, k) in GEMM_SHAPES.items():
        w = torch.randn(n, k, **bf) / 64
        qc, sc = quantize_weight(w, "channel")
        qt, st = quantize_weight(w, "tensor")
        for m in GEMM_TOKENS:
            x = torch.randn(m, k, **bf)
            qx, sx, _ = quantize_rows(x, None)
            qs, ss, _ = quantize_rows(x, torch.tensor(0.05, device="cuda"))
            t = {"bf16_us": do_bench(lambda: torch.nn.functional.linear(x, w), return_mode="median") * 1e3,
                 "quantize_rows_us": do_bench(lambda: quantize_rows(x, None), return_mode="median") * 1e3}
            for fast in (False, True):
                t[f"rowwise_fast{int(fast)}_us"] = do_bench(
                    lambda: scaled_mm(qx, qc, sx, sc, torch.bfloat16, fast_accum=fast), return_mode="median") * 1e3
                t[f"tensorwise_fast{int(fast)}_us"] = do_bench(
                    lambda: scaled_mm(qs, qt, ss, st, torch.bfloat16, fast_accum=fast), return_mode="median") * 1e3
            t["tflops_bf16"] = 2 * m * n * k / t["bf16_us"] / 1e6
            t["tflops_rowwise"] = 2 * m * n * k / t["rowwise_fast0_us"] / 1e6
            out[f"{name}_m{m}"] = t
            print(name, m, {k_: round(v, 1) for k_, v in t.items()}, flush=True)
        del w, qc, qt
        torch.cuda.empty_cache()


# --- summary -----------------------------------------------------------------------------------------------------
def summarize(res: dict) -> dict:
    v = res.get("variants", {})
    get = lambda var, part, key: (v.get(var, {}).get(part) or {}).get(key)  # noqa: E731
    bw = res.get("copy_GBps") or 0.0
    s = {"bs1_bf16_tok_s": get("bf16", "bs1", "decode_tok_s"), "bs1_fp8_tok_s": get("fp8", "bs1", "decode_tok_s"),
         "bs1_floor_fp8_tok_s": bw * 1e9 / BYTES_PER_STEP["fp8"] if bw else None,
         "bs1_floor_bf16_tok_s": bw * 1e9 / BYTES_PER_STEP["bf16"] if bw else None,
         "n256_bf16_tok_s": get("bf16", "n256", "output_tok_s"), "n256_fp8_tok_s": get("fp8", "n256", "output_tok_s"),
         "n256_fp8_fast_tok_s": get("fp8_fast", "n256", "output_tok_s"),
         "c64_bf16_tok_s": get("bf16", "c64", "output_tok_s"), "c64_fp8_tok_s": get("fp8", "c64", "output_tok_s"),
         "c64_fp8_fast_tok_s": get("fp8_fast", "c64", "output_tok_s")}
    if s["c64_bf16_tok_s"] and s["c64_fp8_tok_s"]:
        s["c64_ratio"] = s["c64_fp8_tok_s"] / s["c64_bf16_tok_s"]
    kv = {name: r.get("kv_capacity_tokens") for name, r in v.items()}
    if kv.get("bf16") and kv.get("fp8"):
        s["kv_capacity_ratio_fp8_vs_bf16"] = kv["fp8"] / kv["bf16"]
    s["targets"] = {k: {"target": t, "value": s.get(k), "met": s.get(k) is not None and s[k] >= t}
                    for k, t in TARGETS.items()}
    return s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--what", default="kernels,bf16,fp8,fp8_fast", help="kernels and/or variants: " +
                    ", ".join(VARIANTS))
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # child process: one engine variant
    ap.add_argument("--attn", default="triton")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--override", action="append", default=[])
    a = ap.parse_args()
    out = Path(a.out)
    if a.variant:
        try:
            res = run_variant(a.variant, a)
        except Exception:  # noqa: BLE001 - the parent records the error with what was measured
            import traceback

            res = {"variant": a.variant, "error": traceback.format_exc()[-3000:]}
        out.write_text(json.dumps(res, indent=1))
        return
    import transformers
    import triton

    import engine_bench as eb

    res: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
                 "transformers": transformers.__version__, "model": "Llama-3.1-8B shapes, random weights",
                 "layers": a.layers, "attn_backend": a.attn, "page_size": a.page_size,
                 "copy_GBps": eb.copy_bandwidth_gbps(), "variants": {}}
    torch.cuda.empty_cache()  # the variants' processes size their KV pools from the free memory
    what = a.what.split(",")
    t0 = time.perf_counter()
    for name in [w for w in what if w in VARIANTS]:
        res["variants"][name] = spawn(name, a)
        res["summary"] = summarize(res)
        out.write_text(json.dumps(res, indent=1))
        print(name, json.dumps({k: res["variants"][name].get(k) for k in ("build_s", "kv_capacity_tokens", "bs1",
                                                                          "c64", "n256", "error")}, default=str)[:1500],
              flush=True)
    if "kernels" in what:
        for fn in (bench_gemv, bench_gemm):
            try:
                fn(res)
            except Exception as e:  # noqa: BLE001 - keep the engine numbers
                res.setdefault("errors", []).append(f"{fn.__name__}: {type(e).__name__}: {e}"[:2000])
            out.write_text(json.dumps(res, indent=1))
    res["total_s"] = time.perf_counter() - t0
    res["summary"] = summarize(res)
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res["summary"], indent=1))


if __name__ == "__main__":
    main()
