"""Mixture-of-experts on one GPU (issue 13): the fused Triton MoE against its byte floor, the torch reference and
torch._grouped_mm, and `ad bench`-equivalent engine runs for the Qwen3-30B-A3B and Mixtral-8x7B targets.

    python3 benchmarks/moe_bench.py --out benchmarks/results/moe_h200.json          # everything (~5 min on an H200)
    python3 benchmarks/moe_bench.py --what kernels --out k.json                      # kernels only (~1 min)
    python3 benchmarks/moe_bench.py --what engine --skip-hf --out e.json             # engine only, no HF baseline

kernels: one MoE layer, Qwen3-30B-A3B experts (128, top-8, h 2048, I 768) at 1, 16, 64, 256 and 2048 tokens and
  Mixtral-8x7B experts (8, top-2, h 4096, I 14336) at 1 and 256, bf16, softmax routing of random logits:
  triton_moe_fused (CUDA-graph replay, as in a captured decode step), the bytes it must read (the distinct experts
  the routing touches x 3 x I x h x 2 B, plus activations) over the copy bandwidth measured here, torch_moe_fused
  (the torch backend), torch_moe (the canonical reference: host syncs, eager), a torch._grouped_mm MoE (sort +
  two grouped GEMMs) where torch has it; max error of each against an fp32 reference. A small config sweep at
  decode sizes shows what the default block sizes leave on the table.
engine: the Engine through the `ad bench` driver and metrics (autodeploy_cli.bench: same warm-up, timing and JSON
  blocks): Qwen3-30B-A3B from the registry (random weights, skip_loading_weights, bf16, triton attention,
  torch-cudagraph): batch 1 128/256 (4 requests, one at a time) and 64 x 1024/128 at concurrency 64 with
  `--baseline hf` in the same run; a decode-step profile at batch 1 (MoE kernels vs the rest vs host time);
  Mixtral-8x7B batch 1 128/256. The issue's targets sit next to the numbers.
Every number carries its conditions (GPU, versions, shapes). Results are written after every section.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from moe_bench_util import QWEN_TINY, _err, _time, copy_bandwidth, grouped_mm_moe, layer, layer_cpu  # noqa: E402

RES: dict = {}
OUT: Path = Path("moe_bench.json")
QWEN = dict(name="qwen3-30b-a3b", experts=128, top_k=8, hidden=2048, inter=768, layers=48)
MIXTRAL = dict(name="mixtral-8x7b", experts=8, top_k=2, hidden=4096, inter=14336, layers=32)
TARGETS = {"qwen_bs1_decode_tok_s": 400, "qwen_c64_output_tok_s": 3000, "qwen_c64_vs_hf": 2.0,
           "mixtral_bs1_decode_tok_s": 120}


def save() -> None:
    OUT.write_text(json.dumps(RES, indent=1, default=str))


def section(name):
    def deco(fn):
        def run(*a, **k):
            t0 = time.perf_counter()
            try:
                fn(*a, **k)
            except Exception:  # noqa: BLE001 - keep what the other sections measured
                RES.setdefault("errors", {})[name] = traceback.format_exc()[-3000:]
            RES.setdefault("section_s", {})[name] = time.perf_counter() - t0
            save()
        return run
    return deco


def bench_layer(shape: dict, tokens: int, bw: float) -> dict:
    from autodeploy_cli.bench.metrics import expected_experts_touched
    from kernels.triton import moe as tm

    AD = torch.ops.auto_deploy
    x, ids, w, w13, w2 = layer(shape, tokens)
    n, h, i, k = shape["experts"], shape["hidden"], shape["inter"], shape["top_k"]
    touched = int(torch.unique(ids).numel())
    bytes_ = touched * 3 * i * h * 2 + 2 * tokens * h * 2 + ids.numel() * 12
    row = dict(tokens=tokens, pairs=tokens * k, experts_touched=touched,
               experts_touched_expected=expected_experts_touched(n, k, tokens), bytes=bytes_,
               floor_us=bytes_ / bw * 1e6, config=dataclasses.asdict(tm.pick_config(tokens * k, n, tokens, i, h)))
    ref32 = AD.torch_moe_fused(x.float(), ids, w, w13.float(), w2.float())
    row["triton_us"] = _time(lambda: AD.triton_moe_fused(x, ids, w, w13, w2), graph=True) * 1e3
    row["triton_err"] = _err(AD.triton_moe_fused(x, ids, w, w13, w2), ref32)
    row["triton_fraction_of_floor"] = row["floor_us"] / row["triton_us"]
    row["triton_TB_s"] = bytes_ / row["triton_us"] / 1e6
    if tokens * k <= n or tokens <= 256:  # the dense torch path at 2048 tokens x 128 experts is just slow
        row["torch_fused_us"] = _time(lambda: AD.torch_moe_fused(x, ids, w, w13, w2), graph=True) * 1e3
        row["torch_fused_err"] = _err(AD.torch_moe_fused(x, ids, w, w13, w2), ref32)
    lists = ([w13[e, :i] for e in range(n)], [w2[e] for e in range(n)], [w13[e, i:] for e in range(n)])
    row["torch_moe_reference_us"] = _time(lambda: AD.torch_moe(x, ids, w, *lists), graph=False) * 1e3
    if hasattr(torch, "_grouped_mm"):
        try:
            row["grouped_mm_us"] = _time(lambda: grouped_mm_moe(x, ids, w, w13, w2), graph=True) * 1e3
            row["grouped_mm_err"] = _err(grouped_mm_moe(x, ids, w, w13, w2), ref32)
        except Exception as e:  # noqa: BLE001 - torch builds without a grouped-mm kernel for this GPU
            row["grouped_mm_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    else:
        row["grouped_mm_error"] = "torch has no _grouped_mm"
    return row


def sweep(shape: dict, tokens: int) -> list[dict]:
    """Triton MoE time at one size for a few launch configs (pairwise and grouped), fastest first."""
    from kernels.triton import moe as tm

    x, ids, w, w13, w2 = layer(shape, tokens)
    configs = [tm.pick_config(tokens * shape["top_k"], shape["experts"], tokens, shape["inter"], shape["hidden"])]
    configs += [tm.MoeConfig(True, bn, bk, dn, dk, num_warps=nw) for bn, bk, dn, dk, nw in
                ((4, 512, 2, 1024, 4), (8, 512, 4, 1024, 4), (16, 512, 4, 1024, 4), (8, 512, 2, 1024, 2),
                 (8, 1024, 4, 512, 8), (16, 256, 8, 256, 4), (32, 512, 16, 512, 8))]
    configs += [tm.MoeConfig(False, block_n=bn, block_k=bk, block_m=16, num_warps=nw, num_stages=st) for bn, bk, nw, st
                in ((64, 128, 4, 4), (32, 256, 4, 3), (128, 64, 4, 4), (64, 256, 8, 3))]
    rows = []
    for cfg in configs:
        try:
            us = _time(lambda: tm.fused_moe(x, ids, w, w13, w2, config=cfg), graph=True) * 1e3
            rows.append(dict(config=dataclasses.asdict(cfg), us=us))
        except Exception as e:  # noqa: BLE001 - a config the GPU cannot run
            rows.append(dict(config=dataclasses.asdict(cfg), error=f"{type(e).__name__}: {str(e)[:200]}"))
    return sorted(rows, key=lambda r: r.get("us", 1e9))


@section("kernels")
def run_kernels() -> None:
    from autodeploy_cli.ops import load_ops
    from kernels.triton import moe  # noqa: F401 - registers triton_moe_fused

    load_ops()
    bw = RES["copy_bytes_s"]
    out = RES.setdefault("kernels", {})
    for shape, sizes in ((QWEN, (1, 16, 64, 256, 2048)), (MIXTRAL, (1, 256))):
        rows = out.setdefault(shape["name"], {"shape": shape, "per_layer": []})["per_layer"]
        for tokens in sizes:
            rows.append(bench_layer(shape, tokens, bw))
            save()
        torch.cuda.empty_cache()
    out["sweep"] = {f"qwen3-30b-a3b_t{t}": sweep(QWEN, t) for t in (1, 16)}


# --- engine ---------------------------------------------------------------------------------------------------
def _plan(isl: int, osl: int, n: int, conc: int, cfg):
    from autodeploy_cli.bench.plan import BenchPlan

    return BenchPlan(isl=isl, osl=osl, num_requests=n, concurrency=conc, isl_stdev=0.0, osl_stdev=0.0, seed=0,
                     dataset=None, mode="latency" if conc == 1 else "throughput", max_seq_len=cfg.max_seq_len,
                     max_num_tokens=8192)


def _result(plan, cfg, factory, workload, bw):
    from autodeploy_cli.bench import hardware
    from autodeploy_cli.bench.results import BenchResult

    res = BenchResult(plan=plan, config=dataclasses.asdict(cfg), workload=workload.summary(),
                      conditions={"model": cfg.model, "dtype": "bfloat16", "device": "cuda",
                                  "attn_backend": cfg.attn_backend, "compile_backend": cfg.compile_backend,
                                  "max_seq_len": cfg.max_seq_len, "max_batch_size": cfg.max_batch_size})
    res.environment = hardware.environment(factory.device)
    res.model = hardware.model_bytes(factory)
    res.hardware = {"copy_bandwidth_gb_s": bw / 1e9 if bw else None, "note": "measured once per moe_bench run"}
    return res


def profile_step(engine, prompt: int = 128, steps: int = 20) -> dict:
    """One sequence's decode steps under torch.profiler: MoE kernel time, all kernels, and the wall time."""
    from torch.profiler import ProfilerActivity, profile

    from autodeploy_cli.bench.ours import sampling_params

    engine.add_request(list(range(100, 100 + prompt)), sampling_params(steps + 8))
    before = engine.stats.decode_steps
    while engine.stats.decode_steps < before + 2:
        engine.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / steps
    while engine.has_unfinished():
        engine.step()
    rows = []
    for e in prof.key_averages():
        dev = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if dev > 0 and e.device_type.name == "CUDA":
            rows.append({"name": e.key[:100], "us_per_step": dev / steps, "calls_per_step": e.count / steps})
    rows.sort(key=lambda r: -r["us_per_step"])
    total = sum(r["us_per_step"] for r in rows)
    moe = sum(r["us_per_step"] for r in rows if any(s in r["name"] for s in ("_pair_", "_grouped_", "_count_k",
                                                                           "_scatter_k", "_sum_topk")))
    return dict(kernel_us_per_step=total, moe_kernel_us_per_step=moe, wall_us_per_step_profiled=wall * 1e6,
                host_gap_us_per_step=wall * 1e6 - total, top=rows[:20])


def engine_model(model: str, runs: list[tuple], max_batch_size: int, max_seq_len: int, baseline_of: str,
                 profile: bool, device: str = "cuda", dtype: str = "bfloat16") -> dict:
    from autodeploy_cli.bench import baselines, hardware, ours
    from autodeploy_cli.bench.metrics import RunTrace, now
    from autodeploy_cli.bench.workload import special_token_ids, synthetic_workload
    from autodeploy_cli.config.loader import resolve
    from autodeploy_cli.models.factory import ModelFactory

    cfg = resolve([], [f"model={model}", "skip_loading_weights=true", f"dtype={dtype}", f"device={device}",
                       f"max_batch_size={max_batch_size}", f"max_seq_len={max_seq_len}"])
    factory = ModelFactory(cfg)
    hf_cfg = factory.hf_config()
    bw = RES.get("copy_bytes_s")
    out: dict = {}
    t0 = now()
    engine = ours.make_engine(cfg)
    out["build"] = ours.build_split(engine.build_result.records, now() - t0)
    out["build"].pop("records", None)
    kept = {}
    for name, isl, osl, n, conc in runs:
        plan = _plan(isl, osl, n, conc, cfg)
        workload = synthetic_workload(plan, hf_cfg.vocab_size, special_token_ids(hf_cfg))
        result = _result(plan, cfg, factory, workload, bw)
        trace = RunTrace("ad", f"ad engine, {cfg.attn_backend} attention, {cfg.compile_backend}")
        t1 = now()
        ours.run_engine(engine, workload.requests[:conc], conc, RunTrace("ad-warmup"))
        trace.warmup_s = now() - t1
        ours.run_engine(engine, workload.requests, conc, trace)
        result.runs["ad"] = trace
        kept[name] = (result, workload, plan)
        out[name] = result.to_dict()
        RES["engine"][model] = out
        save()
    if profile and device == "cuda":
        out["profile_bs1"] = profile_step(engine)
    del engine
    hardware.free_device_memory(factory.device)
    if baseline_of in kept:
        result, workload, plan = kept[baseline_of]
        hf = factory.materialize(factory.device)
        trace = RunTrace("hf")
        try:
            baselines.run_hf(hf, "hf", workload.requests, plan.concurrency, trace)
        finally:
            del hf
            hardware.free_device_memory(factory.device)
        result.runs["hf"] = trace
        out[baseline_of] = result.to_dict()
    return out


def _summary(model: str, run: str) -> dict:
    data = RES["engine"].get(model, {}).get(run)
    if not isinstance(data, dict):
        return {}
    ad = data["runs"]["ad"]
    tpot = (ad.get("tpot_ms") or {}).get("mean")
    row = {"output_tok_s": ad.get("output_throughput_tok_s"), "decode_tok_s": 1e3 / tpot if tpot else None,
           "decode_fraction_of_floor": ad["decode"].get("bandwidth_floor_fraction"),
           "floor_ms_per_step": ad["decode"].get("floor_ms_per_step"), "mean_step_ms": ad["decode"].get("mean_step_ms")}
    if "hf" in data["runs"]:
        row["hf_output_tok_s"] = data["runs"]["hf"].get("output_throughput_tok_s")
        row["speedup_vs_hf"] = data["speedup_vs"]["hf"].get("output_throughput_tok_s")
    return row


@section("engine")
def run_engine(skip_hf: bool) -> None:
    RES.setdefault("engine", {})
    qwen = "Qwen/Qwen3-30B-A3B"
    RES["engine"][qwen] = engine_model(
        qwen, [("bs1_128_256", 128, 256, 4, 1), ("c64_1024_128", 1024, 128, 64, 64)], max_batch_size=64,
        max_seq_len=1280, baseline_of="" if skip_hf else "c64_1024_128", profile=True)
    save()
    mixtral = "mistralai/Mixtral-8x7B-v0.1"
    RES["engine"][mixtral] = engine_model(mixtral, [("bs1_128_256", 128, 256, 4, 1)], max_batch_size=1,
                                          max_seq_len=512, baseline_of="", profile=False)
    q1, q64, m1 = _summary(qwen, "bs1_128_256"), _summary(qwen, "c64_1024_128"), _summary(mixtral, "bs1_128_256")
    RES["targets"] = {
        "qwen3_30b_bs1_decode_tok_s": {"target": TARGETS["qwen_bs1_decode_tok_s"], **q1},
        "qwen3_30b_c64_output_tok_s": {"target": TARGETS["qwen_c64_output_tok_s"],
                                       "target_vs_hf": TARGETS["qwen_c64_vs_hf"], **q64},
        "mixtral_8x7b_bs1_decode_tok_s": {"target": TARGETS["mixtral_bs1_decode_tok_s"], **m1},
    }


def smoke_cpu() -> None:
    """The engine section's driver on a tiny Qwen3-MoE on CPU (float32): checks this script, not the speed."""
    from tests.tiny_models import write_tiny_model_dir

    model = write_tiny_model_dir(OUT.parent / "moe_bench_tiny", "qwen3_moe")
    RES["engine"] = {}
    RES["engine"]["tiny"] = engine_model(str(model), [("bs1", 16, 8, 2, 1), ("c4", 32, 8, 4, 4)], max_batch_size=4,
                                         max_seq_len=64, baseline_of="c4", profile=False, device="cpu",
                                         dtype="float32")
    RES["targets"] = {"tiny_c4": _summary("tiny", "c4")}
    x, ids, w, w13, w2 = (t.cpu().float() for t in layer_cpu(QWEN_TINY, 5))
    if hasattr(torch, "_grouped_mm"):
        from autodeploy_cli.ops import load_ops

        load_ops()
        try:
            RES["grouped_mm_err"] = _err(grouped_mm_moe(x, ids, w, w13, w2),
                                         torch.ops.auto_deploy.torch_moe_fused(x, ids, w, w13, w2))
        except Exception as e:  # noqa: BLE001 - no CPU kernel for these dtypes / shapes
            RES["grouped_mm_err"] = f"{type(e).__name__}: {str(e)[:200]}"


def main() -> None:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", default="kernels,engine", help="comma list: kernels, engine")
    ap.add_argument("--skip-hf", action="store_true", help="engine: no HF generate baseline for the c64 run")
    ap.add_argument("--smoke-cpu", action="store_true", help="run the engine driver on a tiny model on CPU")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    OUT = Path(a.out)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    if a.smoke_cpu:
        smoke_cpu()
        save()
        print(json.dumps({k: RES.get(k) for k in ("targets", "grouped_mm_err", "errors")}, indent=1, default=str))
        return
    import transformers
    import triton

    RES["conditions"] = dict(gpu=torch.cuda.get_device_name(0), torch=torch.__version__, triton=triton.__version__,
                             transformers=transformers.__version__, cuda=torch.version.cuda, dtype="bfloat16",
                             grouped_mm=hasattr(torch, "_grouped_mm"), targets=TARGETS)
    RES["copy_bytes_s"] = copy_bandwidth()
    RES["conditions"]["copy_GB_s"] = RES["copy_bytes_s"] / 1e9
    save()
    what = a.what.split(",")
    if "kernels" in what:
        run_kernels()
    if "engine" in what:
        run_engine(a.skip_hf)
    save()
    print(json.dumps({k: RES.get(k) for k in ("conditions", "targets", "section_s", "errors")}, indent=1,
                     default=str))


if __name__ == "__main__":
    main()
