"""Issue 17 targets on one GPU: Nemotron-H-8B shapes (registry architecture, random bf16 weights, no download).

    python3 benchmarks/hybrid_bench.py --out benchmarks/results/h200_nemotron_h_8b_hybrid.json

bs1   batch-1 decode, prompt 128, 256 new tokens (`ad bench --mode latency`): decode tok/s and the achieved fraction
      of the bandwidth floor = (weights + KV of the 4 attention layers + the Mamba2 SSM/conv state slots, bytes read
      per step) / copy bandwidth measured in the same run. Target >= 0.7.
c64   64 requests x ISL 1024 / OSL 128 at concurrency 64 (`ad bench`), with `--baseline hf` (transformers generate,
      eager) in the same run on the same weights. Target: output tok/s >= 2x HF. HF's reference Mamba2 path (no
      mamba_ssm there) materialises [batch, chunks, 128, 128, heads, state] fp32 tensors, 8 GiB per sequence at
      1024 tokens, so it runs `--hf-concurrency` (default 4) sequences per generate call.
profile  torch.profiler over 20 batch-1 decode steps and one 1024-token prefill of the same engine (top CUDA
      kernels per step / run): where the time goes if a target is missed.
bs1 and c64 each run `ad bench` in its own process (a crash in one leaves the other's numbers); profile runs here
afterwards. The summary and the raw results land in --out. Default backends: triton mixers + attention,
torch-cudagraph. About 5 GPU minutes.
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

ROOT = Path(__file__).resolve().parents[1]
MODEL = "nvidia/Nemotron-H-8B-Base-8K"
COMMON = ["skip_loading_weights=true", "dtype=bfloat16"]


def _ad_bench(args: list[str], out: Path, timeout_s: int) -> tuple[dict | None, str]:
    """Run `ad bench ... --output out` in a subprocess; (result or None, last lines of its output)."""
    cmd = [sys.executable, "-m", "autodeploy_cli", "bench", *args, "--output", str(out)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)})  # keep carried wheels
        log = (proc.stdout + proc.stderr)[-4000:]
    except subprocess.TimeoutExpired as e:
        log = f"timed out after {timeout_s}s\n{(e.stdout or b'')[-2000:]!r}"
    log = f"$ {' '.join(cmd)}\n({time.perf_counter() - t0:.0f}s)\n{log}"
    return (json.loads(out.read_text()) if out.is_file() else None), log


def _bs1(model: str, extra: list[str], tmp: Path, timeout_s: int) -> dict:
    args = ["--model", model, "--mode", "latency", "--isl", "128", "--osl", "256", "--num-requests", "3",
            "max_seq_len=512", "max_batch_size=8", *COMMON, *extra]
    raw, log = _ad_bench(args, tmp / "bs1.json", timeout_s)
    summary = {"target_fraction": 0.7, "log_tail": log}
    if raw:
        ad = raw["runs"]["ad"]
        dec = ad["decode"]
        summary.update(output_tok_s=ad["output_throughput_tok_s"], per_user_tok_s=ad["per_user_tok_s"],
                       tpot_ms=ad["tpot_ms"], mean_step_ms=dec["mean_step_ms"], floor_ms=dec["floor_ms_per_step"],
                       bytes_per_step=dec["mean_bytes_per_step"], fraction=dec["bandwidth_floor_fraction"],
                       copy_bandwidth_gb_s=raw["hardware"]["copy_bandwidth_gb_s"], model_bytes=raw["model"],
                       met=(dec["bandwidth_floor_fraction"] or 0) >= 0.7)
    return {"summary": summary, "raw": raw}


def _c64(model: str, extra: list[str], tmp: Path, timeout_s: int, hf_concurrency: int) -> dict:
    hf = ["--baseline", "hf", "--baseline-concurrency", str(hf_concurrency)] if hf_concurrency else []
    args = ["--model", model, "--isl", "1024", "--osl", "128", "--num-requests", "64", "--concurrency", "64",
            "max_seq_len=1152", "max_batch_size=64", *hf, *COMMON, *extra]
    raw, log = _ad_bench(args, tmp / "c64.json", timeout_s)
    summary = {"target_speedup": 2.0, "hf_concurrency": hf_concurrency, "log_tail": log}
    if raw:
        ours = raw["runs"]["ad"]["output_throughput_tok_s"]
        hf = raw["runs"].get("hf", {}).get("output_throughput_tok_s")
        summary.update(output_tok_s=ours, hf_output_tok_s=hf, speedup=(ours / hf) if hf else None,
                       ttft_ms=raw["runs"]["ad"]["ttft_ms"], decode=raw["runs"]["ad"]["decode"],
                       build=raw.get("build", {}).get("total_s"), met=bool(hf) and ours / hf >= 2.0)
    return {"summary": summary, "raw": raw}


def _profile(model: str, extra: list[str]) -> dict:
    """Top kernels of batch-1 decode steps and of one 1024-token prefill (engine_bench's profilers)."""
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import engine_bench  # noqa: E402 - the profilers the Llama benchmark uses

    from autodeploy_cli.config.loader import resolve
    from autodeploy_cli.llm import build_engine

    engine = build_engine(resolve([], [*COMMON, *extra, "max_seq_len=1280", "max_batch_size=8"], model=model))
    res: dict = {}
    engine_bench.profile_decode(engine, res)
    engine_bench.profile_prefill(engine, res)
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file for the summary and both raw `ad bench` results")
    p.add_argument("--model", default=MODEL, help="a registry id (stored architecture) or a local HF folder")
    p.add_argument("--what", default="bs1,c64,profile", help="comma-separated parts: bs1, c64, profile")
    p.add_argument("--no-hf", action="store_true", help="c64 without the HF baseline")
    p.add_argument("--hf-concurrency", type=int, default=4, help="sequences per HF generate call in c64")
    p.add_argument("--timeout", type=int, default=420, help="seconds per part")
    p.add_argument("--device", default="cuda", help="cuda (the target), or cpu for a smoke run of the script")
    p.add_argument("override", nargs="*", help="extra config overrides for ad, e.g. compile_backend=torch-simple")
    a = p.parse_args()
    parts = a.what.split(",")
    a.override = [f"device={a.device}", *a.override]
    result: dict = {"model": a.model, "overrides": [*COMMON, *a.override], "started": time.strftime("%F %T")}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "bs1" in parts:
            result["bs1"] = _bs1(a.model, a.override, tmp, a.timeout)
        if "c64" in parts:
            result["c64"] = _c64(a.model, a.override, tmp, a.timeout, 0 if a.no_hf else a.hf_concurrency)
    if "profile" in parts:
        try:
            result["profile"] = _profile(a.model, a.override)
        except Exception as e:  # noqa: BLE001 - the timed parts above are kept either way
            result["profile"] = {"error": f"{type(e).__name__}: {e}"}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    for part in ("bs1", "c64"):
        if part in result:
            s = {k: v for k, v in result[part]["summary"].items() if k not in ("log_tail", "model_bytes", "decode")}
            print(part, json.dumps(s))
    for key, prof in result.get("profile", {}).items():
        top = prof.get("top", [])[:8] if isinstance(prof, dict) else prof
        print(key, json.dumps(top)[:2000])
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
