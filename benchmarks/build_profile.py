"""Build time of the Llama-3.1-8B-shaped graph, per transform and per stage (random weights, no downloads).

    python3 benchmarks/build_profile.py --device cuda --runs 2           # 2nd run: export cache hit
    python3 benchmarks/build_profile.py --device cpu --stop-after sharding_transform_executor   # no weights
    python3 benchmarks/build_profile.py --device cpu --narrow --stop-after compile_model    # 32 narrow layers
    python3 benchmarks/build_profile.py ... --profile out.prof              # cProfile of the last run

Each run builds in this process with its own export cache folder (--cache-dir, default a temporary one), so run 1
is a cache miss and later runs are hits. Prints the conditions next to the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                head_dim=128, num_hidden_layers=32, vocab_size=128256, max_position_embeddings=8192,
                rope_theta=500000.0, tie_word_embeddings=False, rms_norm_eps=1e-5)
# the same graph (32 layers, same node count) with small tensors: post-load stages on a CPU without 16 GB
NARROW = dict(hidden_size=512, intermediate_size=1792, num_attention_heads=4, num_key_value_heads=1,
              vocab_size=8192)


def one_build(args, model_dir: Path, cache_dir: str, profile: str | None) -> dict:
    import os

    from autodeploy_cli.config.loader import resolve
    from autodeploy_cli.pipeline.build import build

    os.environ["AD_CACHE_DIR"] = cache_dir
    over = ["skip_loading_weights=true", f"device={args.device}", "dtype=bfloat16", "max_seq_len=2048",
            "max_batch_size=64", *args.override]
    cfg = resolve([], over, model=str(model_dir))
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    res = build(cfg, stop_after=args.stop_after)
    total = time.perf_counter() - t0
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)
    stages: dict[str, float] = {}
    for r in res.records:
        stages[r.stage] = round(stages.get(r.stage, 0.0) + r.time_s, 3)
    rows = [dict(name=r.name, s=round(r.time_s, 3), pre=round(r.pre_s, 3), apply=round(r.apply_s, 3),
                 post=round(r.post_s, 3), matches=r.num_matches, note=r.note[:50]) for r in res.records if r.enabled]
    return dict(build_s=round(total, 3), stages=stages, transforms=rows,
                export_cache=res.report.get("export_cache"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stop-after", default=None, help="last transform to run (default: the whole pipeline)")
    ap.add_argument("--narrow", action="store_true", help="32 layers with narrow tensors (see NARROW)")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--profile", default=None, help="write a cProfile of the last run here")
    ap.add_argument("--out", default=None)
    ap.add_argument("override", nargs="*", help="extra config overrides, key=value")
    args = ap.parse_args()

    import torch
    import transformers

    from tests.tiny_models import write_tiny_model_dir

    shape = dict(LLAMA_8B, num_hidden_layers=args.layers, **(NARROW if args.narrow else {}))
    model_dir = write_tiny_model_dir(Path(tempfile.mkdtemp()) / "llama8b", "llama", **shape)
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="ad-cache-")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    cond = dict(device=args.device, gpu=gpu, torch=torch.__version__, transformers=transformers.__version__,
                shape="narrow" if args.narrow else "llama-3.1-8b", layers=args.layers, stop_after=args.stop_after)
    runs = []
    for i in range(args.runs):
        runs.append(one_build(args, model_dir, cache_dir, args.profile if i == args.runs - 1 else None))
        r = runs[-1]
        print(f"run {i + 1}: build {r['build_s']:.2f}s, export cache: {r['export_cache']}  ({json.dumps(cond)})")
        print("  stages: " + ", ".join(f"{k}={v:.2f}s" for k, v in r["stages"].items()))
        for t in r["transforms"]:
            if t["s"] >= 0.05:
                print(f"  {t['name']:32s} {t['s']:7.3f}s (pre {t['pre']:.3f}, apply {t['apply']:.3f}, "
                      f"post {t['post']:.3f}) matches={t['matches']} {t['note']}")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(conditions=cond, runs=runs), indent=1))


if __name__ == "__main__":
    main()
