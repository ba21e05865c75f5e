"""Single-token linear layers of Llama-3.1-8B (bf16): kernels/triton/gemv.py configs vs cuBLAS (torch F.linear).

    python3 benchmarks/gemv_bench.py --out gemv.json

Each timing replays a CUDA graph of launches over rotating weight copies (together several times the 50 MB L2, so
every launch streams its weights from HBM), the way decode runs; reported as us per launch and TB/s of weight read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {  # name: (N, K, prologue)
    "qkv": (6144, 4096, None), "qkv_add_norm": (6144, 4096, "add_norm"), "o_proj": (4096, 4096, None),
    "gate_up": (28672, 4096, None), "gate_up_add_norm": (28672, 4096, "add_norm"), "down": (4096, 14336, None),
    "down_silu_mul": (4096, 14336, "silu_mul"), "lm_head": (128256, 4096, None),
}
CONFIGS = [(2, 1024, 4), (4, 1024, 4), (8, 512, 4), (16, 1024, 8), (16, 512, 4), (32, 512, 8)]


def graph_time_us(fn, copies: int) -> float:
    from triton.testing import do_bench

    for i in range(copies):
        fn(i)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(copies):
            fn(i)
    return do_bench(g.replay, warmup=10, rep=60, return_mode="median") * 1e3 / copies


def main() -> None:
    from kernels.triton.activation import silu_and_mul
    from kernels.triton.gemv import _config, gemv
    from kernels.triton.norm import add_rmsnorm

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated names from SHAPES")
    a = ap.parse_args()
    res: dict = {"gpu": torch.cuda.get_device_name(0), "shapes": {}}
    for name, (n, k, prologue) in [(s_, SHAPES[s_]) for s_ in a.shapes.split(",")]:
        sm, an = prologue == "silu_mul", prologue == "add_norm"
        nbytes = n * k * 2
        copies = max(2, min(16, int(400e6 // nbytes)))
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / 64 for _ in range(copies)]
        x = torch.randn(1, 2 * k if sm else k, device="cuda", dtype=torch.bfloat16)
        res_in, nw = torch.randn_like(x), torch.rand(k, device="cuda", dtype=torch.bfloat16) + 0.5

        def unfused(i):  # what runs without the fused prologue: the separate kernel, then cuBLAS
            xin = silu_and_mul(x) if sm else add_rmsnorm(x, res_in, nw, 1e-5)[0] if an else x
            return torch.nn.functional.linear(xin, ws[i])

        def fused(i, cfg):
            kw = dict(norm_weight=nw, residual=res_in, eps=1e-5) if an else {}
            out = gemv(x, ws[i], silu_mul=sm, config=cfg, **kw)
            return out[0] if an else out

        ref = unfused(0)
        cublas = graph_time_us(unfused, copies)
        row = {"N": n, "K": k, "prologue": prologue, "cublas_us": cublas, "cublas_TBps": nbytes / cublas / 1e6,
               "default": _config(n, k), "configs": []}
        for cfg in dict.fromkeys([_config(n, k), *CONFIGS]):
            try:
                err = (fused(0, cfg).float() - ref.float()).abs().max().item()
                us = graph_time_us(lambda i: fused(i, cfg), copies)
            except Exception as e:  # noqa: BLE001 - a config that does not compile is skipped
                row["configs"].append({"cfg": cfg, "error": str(e)[:200]})
                continue
            row["configs"].append({"cfg": cfg, "us": us, "TBps": nbytes / us / 1e6, "max_err": err})
        ok = [c for c in row["configs"] if "us" in c]
        row["best"] = min(ok, key=lambda c: c["us"]) if ok else None
        row["default_us"] = next((c["us"] for c in ok if tuple(c["cfg"]) == tuple(row["default"])), None)
        res["shapes"][name] = row
        print(name, {k_: v for k_, v in row.items() if k_ != "configs"}, flush=True)
        del ws
        torch.cuda.empty_cache()
    Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
