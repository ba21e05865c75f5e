"""The build report: one row per transform, canonical-op coverage, graph size, verification; rich table + JSON."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

from torch import fx

from autodeploy_cli.graph.core import op_name
from autodeploy_cli.pipeline.runner import TransformRecord


def op_census(gm: fx.GraphModule | None, namespace: str = "auto_deploy") -> dict[str, int]:
    """Counts of `namespace.*` ops in the graph, e.g. {"auto_deploy.torch_attention": 2}."""
    if gm is None:
        return {}
    names = Counter(op_name(n) for n in gm.graph.nodes if n.op == "call_function")
    return {k: v for k, v in sorted(names.items()) if k.startswith(namespace + ".")}


def _stage_times(records: list[TransformRecord]) -> dict[str, float]:
    """Seconds per stage, in pipeline order (where a build spends its time: export, matchers, load, ...)."""
    out: dict[str, float] = {}
    for r in records:
        out[r.stage] = out.get(r.stage, 0.0) + r.time_s
    return {k: round(v, 3) for k, v in out.items()}


def build_report(
    model: str,
    records: list[TransformRecord],
    graph_nodes_exported: int | None,
    final_graph: fx.GraphModule | None,
    coverage: list[dict] | None = None,
    verify_rows: list[dict] | None = None,
    verify_failure: str | None = None,
    extra: dict | None = None,
) -> dict[str, Any]:
    final_nodes = sum(1 for n in final_graph.graph.nodes if n.op == "call_function") if final_graph is not None else None
    report = {
        "model": model,
        "transforms": [dataclasses.asdict(r) for r in records],
        "graph_nodes": {"after_export": graph_nodes_exported, "final": final_nodes},
        "canonical_ops": op_census(final_graph),
        "coverage": coverage or [],
        "total_time_s": round(sum(r.time_s for r in records), 4),
        "stage_time_s": _stage_times(records),
    }
    if verify_rows is not None:
        report["verify"] = {"rows": verify_rows, "first_failure": verify_failure, "ok": verify_failure is None}
    if extra:
        report.update(extra)
    return report


def write_json(report: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2, default=str) + "\n")


def _verify_cell(name: str, rows: list[dict]) -> str:
    """`logits 3.6e-07 gen 3.8e-07 / 1e-04 ok` for one transform's verify rows ("n/a" when it matched nothing)."""
    mine = [r for r in rows if r["transform"] == name]
    if not mine:
        return ""
    if all(r["check"] == "n/a" for r in mine):
        return "n/a"
    checked = [r for r in mine if r["check"] != "n/a"]  # a pending generation check shows as "gen n/a"
    parts = [f"{'gen' if r['check'] == 'generation' else 'logits'} {r['max_rel_err']:.1e}" for r in checked]
    parts += ["gen n/a" for r in mine if r["check"] == "n/a"]
    ok = all(r["ok"] for r in mine)
    return f"{' '.join(parts)} / {checked[0]['tolerance']:.0e} {'ok' if ok else 'FAIL'}"


def _timing_line(report: dict) -> str:
    """`stages: export 0.95s, pattern_matcher 2.10s, ...; export cache hit`."""
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in report.get("stage_time_s", {}).items() if v >= 0.01)
    cache = report.get("export_cache")
    why = f" ({cache['note']})" if cache and cache.get("note") else ""
    return f"stages: {stages}" + (f"; export cache {cache['status']}{why}" if cache else "")


def print_report(report: dict, console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"ad build: {report['model']}", show_lines=False)
    for col, just in (("#", "right"), ("transform", "left"), ("stage", "left"), ("enabled", "center"),
                      ("matches", "right"), ("time (s)", "right"), ("note / skipped reason", "left")):
        table.add_column(col, justify=just)
    verify = report.get("verify")
    if verify:
        table.add_column("verify (rel err / tolerance)", justify="right")
    for r in report["transforms"]:
        matches = "-" if not r["enabled"] else ("skipped" if r["skipped"] else str(r["num_matches"]))
        row = [str(r["position"]), r["name"], r["stage"], "yes" if r["enabled"] else "no", matches,
               f"{r['time_s']:.3f}", r["error"] or r["note"]]
        if verify:
            row.append(_verify_cell(r["name"], verify["rows"]))
        table.add_row(*row)
    console.print(table)
    nodes = report["graph_nodes"]
    console.print(f"graph size: {nodes['after_export']} ops after export -> {nodes['final']} ops final; "
                  f"build time {report['total_time_s']:.2f}s")
    console.print(_timing_line(report))
    from rich.markup import escape

    for row in report.get("coverage", []):
        style = "green" if row["found"] == row["expected"] and not row.get("hint") else "yellow"
        console.print(f"[{style}]{row['kind']} {row['found']}/{row['expected']}[/{style}]"
                      + (f"  {escape(row['detail'])}" if row.get("detail") else "")
                      + (f"  {escape(row['hint'])}" if row.get("hint") else ""))
    for note in report.get("notes", []):
        console.print(f"note: {escape(note)}")
    sharding = report.get("sharding")
    if sharding:
        console.print(f"sharding: {escape(sharding['summary'])} (rank {sharding['rank']}; every decision in the "
                      "JSON report)")
        for row in sharding["decisions"]:
            if row.get("fallback"):
                console.print(f"[yellow]  {row['weight']}: {row['style']} ({row['fallback']}: "
                              f"{escape(row['why'])})[/yellow]")
        for note in sharding["notes"]:
            console.print(f"  note: {escape(note)}")
    if report["canonical_ops"]:
        console.print("canonical ops: " + ", ".join(f"{k.split('.', 1)[1]} x{v}" for k, v in report["canonical_ops"].items()))
    if report.get("quantization"):
        q = report["quantization"]
        console.print(f"quantization: {q['scheme']}; {q['linears']} linear layers")
    if report.get("quality"):
        from autodeploy_cli.pipeline.quality_gate import describe

        q = report["quality"]
        style = "green" if q["ok"] else "red"
        console.print(f"[{style}]quality gate vs the {q['vs']}: {describe(q)}[/{style}]")
    if verify:
        reasons = sorted({r["tolerance_reason"] for r in verify["rows"] if r.get("tolerance_reason")})
        console.print(f"verify tolerance: max|ours - HF| / max|HF| from {', '.join(reasons)} "
                      "(autodeploy_cli/pipeline/tolerance.py); gen = the generation check (cached decode steps)")
        if verify["ok"]:
            console.print("[green]verify: every transform matches HF (logits, and generation once cached)[/green]")
        else:
            console.print(f"[red]verify: first transform out of tolerance: {verify['first_failure']}[/red]")
