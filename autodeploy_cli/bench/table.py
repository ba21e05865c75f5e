"""The `ad bench` table: ours, each baseline and the speedup, with the conditions printed above the numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.table import Table

from autodeploy_cli.bench.results import OURS

# (label, key, sub-key, better): better is "higher", "lower", or None (no speedup shown)
ROWS: list[tuple[str, str, Optional[str], Optional[str]]] = [
    ("requests done", "num_requests_completed", None, None),
    ("duration (s)", "duration_s", None, "lower"),
    ("requests/s", "request_throughput_req_s", None, "higher"),
    ("output tok/s", "output_throughput_tok_s", None, "higher"),
    ("total tok/s", "total_throughput_tok_s", None, "higher"),
    ("per-user tok/s", "per_user_tok_s", "mean", "higher"),
]
for _label, _key in (("TTFT", "ttft_ms"), ("ITL", "itl_ms"), ("TPOT", "tpot_ms"), ("e2e", "e2e_latency_ms")):
    ROWS += [(f"{_label} {q} (ms)", _key, q, "lower") for q in ("mean", "p50", "p90", "p99")]
ROWS += [
    ("peak GPU mem (GiB)", "peak_gpu_memory_gib", None, None),  # ours preallocates the KV cache: no ratio
    ("decode / BW floor", "decode", "bandwidth_floor_fraction", "higher"),
    ("warm-up (s)", "warmup_s", None, None),
]
_COUNTS = {"num_requests_completed"}


def _value(run: dict[str, Any], key: str, sub: Optional[str]) -> Optional[float]:
    value = run.get(key)
    if sub is not None:
        value = (value or {}).get(sub)
    return value if isinstance(value, (int, float)) else None


def _fmt(value: Optional[float], key: str = "") -> str:
    if value is None:
        return "-"
    if key in _COUNTS:
        return str(int(value))
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"


def conditions_line(data: dict[str, Any]) -> str:
    c, env = data["conditions"], data.get("environment", {})
    pk = env.get("packages", {})
    shape = f"dataset {Path(c['dataset']).name}" if c.get("dataset") else f"ISL {c['isl']} / OSL {c['osl']}"
    if c.get("isl_stdev") or c.get("osl_stdev"):
        shape += f" (stdev {c.get('isl_stdev')} / {c.get('osl_stdev')})"
    return (
        f"{c.get('model')} | {c.get('dtype')} | {env.get('gpu_name') or env.get('device', 'cpu')} | {shape} | "
        f"{data['workload']['num_requests']} requests | concurrency {c['concurrency']} | {c['mode']} mode | "
        f"torch {pk.get('torch')} | transformers {pk.get('transformers')} | commit {(env.get('git_commit') or '?')[:10]}"
    )


def render(data: dict[str, Any], console: Console) -> None:
    runs: dict[str, dict[str, Any]] = data["runs"]
    names = list(runs)
    title = "ad bench" + (f" - PARTIAL (interrupted during {data['interrupted_during']})" if data["partial"] else "")
    console.print(f"[bold]{title}[/bold]: {conditions_line(data)}")
    if not runs:
        console.print("no run completed before the interrupt")
        return
    table = Table(show_lines=False)
    table.add_column("metric")
    for name in names:
        table.add_column(name, justify="right")
    baselines = [n for n in names if n != OURS and OURS in runs]
    for name in baselines:
        table.add_column(f"{OURS} vs {name}", justify="right")
    for label, key, sub, better in ROWS:
        cells = [_fmt(_value(runs[n], key, sub), key) for n in names]
        ours = _value(runs.get(OURS, {}), key, sub)
        for name in baselines:
            theirs = _value(runs[name], key, sub)
            if better is None or not ours or not theirs:
                cells.append("")
            else:  # > 1 means ours is better, for rates and latencies alike
                cells.append(f"{(ours / theirs if better == 'higher' else theirs / ours):.2f}x")
        table.add_row(label, *cells)
    console.print(table)
    for name in names:
        console.print(f"  {name}: {runs[name].get('description', '')}")
    _footer(data, console)


def _footer(data: dict[str, Any], console: Console) -> None:
    build = data.get("build")
    if build:
        console.print(
            f"build {build['total_s']:.2f}s (export {build['export_s']:.2f}, transforms {build['transforms_s']:.2f}, "
            f"weight load {build['weight_load_s']:.2f}, compile {build['compile_s']:.2f})"
            f" | KV cache capacity {data.get('kv_cache_capacity_tokens')} tokens"
        )
    hw = data.get("hardware", {})
    bw = hw.get("copy_bandwidth_gb_s")
    console.print(f"copy bandwidth: {f'{bw:,.0f} GB/s' if bw else 'not measured'} ({hw.get('note', '')})")
    quality = data.get("quality")
    if quality:
        console.print(f"quality vs {quality['vs']}: cosine {quality['cosine']:.4f}, top-1 agreement "
                      f"{quality['top1']:.1%} ({quality['top1_ties']:.1%} counting near-ties): "
                      f"{'ok' if quality['ok'] else 'below the thresholds'}")
    peak_note = next((r.get("peak_gpu_memory_note") for r in data["runs"].values()), "")
    if peak_note:
        console.print(f"peak memory: {peak_note}")
    for name, run in data["runs"].items():
        for err in run.get("errors", []):
            console.print(f"[red]{name}: {err}[/red]")
