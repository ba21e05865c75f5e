"""Multi-GPU sharding on H200s (issue 15): `ad bench` at TP=1 and TP=N, the all-reduce cost per decode step, and the
issue's targets, in one run. Random weights (registry architectures, offline); needs as many GPUs as the largest
world size it runs (cases that need more are recorded as skipped).

    python benchmarks/sharding_bench.py --out benchmarks/results/h200_sharding.json            # every case
    python benchmarks/sharding_bench.py --cases llama8b --out /tmp/s.json                      # one case

Cases (batch 1 = one request at a time, ISL/OSL as the issue says):
    llama8b       Llama-3.1-8B   bs1 128/256  TP1, TP2    target: TP2 decode >= 1.8x TP1 (same run)
    llama70b      Llama-3.1-70B  bs1 128/256  TP2, TP4    targets: TP2 >= 45 tok/s, TP4 >= 85 tok/s (floors ~60/~120)
    mixtral8x22b  Mixtral-8x22B  c32 1024/128 TP4         target: builds and runs (reports EP or TP-in-experts)
Per TP=N run: decode tok/s per user, ITL, the mean decode step, the per-GPU bandwidth floor (weights / N + KV / N
over the measured copy bandwidth), the sharding summary, and the all-reduce microbenchmark (NCCL, N ranks,
[batch, hidden] bf16, eager and inside a CUDA graph) times the all-reduces one step runs (2 per layer + embedding).
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CASES: dict[str, dict[str, Any]] = {
    "llama8b": dict(model="meta-llama/Llama-3.1-8B-Instruct", isl=128, osl=256, concurrency=1, num_requests=4,
                    world_sizes=[1, 2], hidden=4096, layers=32, targets={"speedup_tp2_vs_tp1": 1.8}),
    "llama70b": dict(model="meta-llama/Llama-3.1-70B-Instruct", isl=128, osl=256, concurrency=1, num_requests=3,
                     world_sizes=[2, 4], hidden=8192, layers=80, targets={"tp2_tok_s": 45.0, "tp4_tok_s": 85.0}),
    "mixtral8x22b": dict(model="mistralai/Mixtral-8x22B-Instruct-v0.1", isl=1024, osl=128, concurrency=32,
                         num_requests=64, world_sizes=[4], hidden=6144, layers=56, targets={"runs": True}),
}


def _env() -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # keep carried wheels
    return {**os.environ, "PYTHONPATH": path, "NCCL_NVLS_ENABLE": "0", "AUTO_DEPLOY_LOG_LEVEL": "WARNING"}


def ad_bench(case: dict, world_size: int, out: Path, timeout: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "autodeploy_cli", "bench", "--model", case["model"], "--isl", str(case["isl"]),
           "--osl", str(case["osl"]), "--concurrency", str(case["concurrency"]), "--num-requests",
           str(case["num_requests"]), "--output", str(out), f"world_size={world_size}", "skip_loading_weights=true",
           f"max_batch_size={max(8, case['concurrency'])}", f"max_seq_len={case['isl'] + case['osl'] + 64}"]
    t0 = time.time()
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    row: dict[str, Any] = {"world_size": world_size, "command": " ".join(cmd[1:]), "wall_s": time.time() - t0,
                           "returncode": done.returncode}
    if done.returncode != 0 or not out.is_file():
        row["error"] = (done.stderr or done.stdout)[-3000:]
        return row
    doc = json.loads(out.read_text())
    run = doc["runs"]["ad"]
    model, hw = doc.get("model", {}), doc.get("hardware", {})
    bw = hw.get("copy_bandwidth_gb_s")
    per_gpu_bytes = model.get("weight_bytes_per_decode_step", 0) / world_size
    row.update({
        "decode_tok_s_per_user": run["per_user_tok_s"]["mean"], "output_tok_s": run["output_throughput_tok_s"],
        "itl_ms_p50": run["itl_ms"]["p50"], "ttft_ms_p50": run["ttft_ms"]["p50"],
        "mean_decode_step_ms": run.get("decode", {}).get("mean_step_ms"),
        "peak_gpu_memory_gib_rank0": run.get("peak_gpu_memory_gib"), "copy_bandwidth_gb_s": bw,
        "weight_bytes_per_gpu": per_gpu_bytes,
        "floor_tok_s_batch1": (bw * 1e9 / per_gpu_bytes) if bw and per_gpu_bytes else None,
        "build_s": doc.get("build", {}).get("total_s"), "conditions": doc.get("conditions"),
        "environment": doc.get("environment"), "result_file": str(out),
    })
    return row


def _allreduce_worker(rank: int, world_size: int, port: int, sizes: list[tuple[int, int]], out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    results = []
    for batch, hidden in sizes:
        x = torch.randn(batch, hidden, device="cuda", dtype=torch.bfloat16)
        for _ in range(20):
            dist.all_reduce(x)
        torch.cuda.synchronize()
        start, end, reps = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True), 200
        start.record()
        for _ in range(reps):
            dist.all_reduce(x)
        end.record()
        torch.cuda.synchronize()
        eager_us = start.elapsed_time(end) * 1e3 / reps
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(reps):
                dist.all_reduce(x)
        graph.replay()
        torch.cuda.synchronize()
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        results.append({"batch": batch, "hidden": hidden, "bytes": x.numel() * 2, "eager_us": eager_us,
                        "cuda_graph_us": start.elapsed_time(end) * 1e3 / reps})
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def allreduce_microbench(world_size: int, sizes: list[tuple[int, int]]) -> list[dict]:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tempfile.mktemp(suffix=".json")
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    mp.spawn(_allreduce_worker, args=(world_size, port, sizes, out), nprocs=world_size, join=True)
    return json.loads(Path(out).read_text())


def evaluate(name: str, case: dict, runs: dict[int, dict]) -> dict[str, Any]:
    tok = {ws: r.get("decode_tok_s_per_user") for ws, r in runs.items()}
    checks: dict[str, Any] = {}
    if name == "llama8b" and tok.get(1) and tok.get(2):
        checks["speedup_tp2_vs_tp1"] = {"value": tok[2] / tok[1], "target": 1.8, "ok": tok[2] / tok[1] >= 1.8}
    if name == "llama70b":
        for ws, target in ((2, 45.0), (4, 85.0)):
            if tok.get(ws):
                checks[f"tp{ws}_tok_s"] = {"value": tok[ws], "target": target, "ok": tok[ws] >= target}
    if name == "mixtral8x22b" and 4 in runs:
        checks["runs"] = {"value": runs[4].get("returncode") == 0, "target": True, "ok": runs[4].get("returncode") == 0}
    return checks


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per `ad bench` run")
    args = ap.parse_args()
    gpus = torch.cuda.device_count()
    results_dir = args.out.parent / (args.out.stem + "_runs")
    results_dir.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"gpus": gpus, "gpu": torch.cuda.get_device_name(0) if gpus else None,
                           "torch": torch.__version__, "cases": {}}
    for name in args.cases.split(","):
        case = CASES[name]
        runs: dict[int, dict] = {}
        for ws in case["world_sizes"]:
            if ws > gpus:
                runs[ws] = {"world_size": ws, "skipped": f"needs {ws} GPUs, {gpus} visible"}
                continue
            runs[ws] = ad_bench(case, ws, results_dir / f"{name}_tp{ws}.json", args.timeout)
            if ws > 1:
                sizes = sorted({(1, case["hidden"]), (case["concurrency"], case["hidden"])})
                micro = allreduce_microbench(ws, sizes)
                per_step = 2 * case["layers"] + 1  # attention + MLP per layer, the embedding (logits: a gather)
                runs[ws]["allreduce"] = micro
                runs[ws]["allreduce_ms_per_step_cuda_graph"] = micro[0]["cuda_graph_us"] * per_step / 1e3
            print(json.dumps({name: {k: v for k, v in runs[ws].items() if k not in ("environment", "conditions")}},
                             indent=1, default=str))
        doc["cases"][name] = {"case": case, "runs": {str(k): v for k, v in runs.items()},
                              "checks": evaluate(name, case, runs)}
        args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(json.dumps({n: c["checks"] for n, c in doc["cases"].items()}, indent=1))
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
