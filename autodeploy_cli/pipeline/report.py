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
    }
    if verify_rows is not None:
        report["verify"] = {"rows": verify_rows, "first_failure": verify_failure, "ok": verify_failure is None}
    if extra:
        report.update(extra)
    return report


def write_json(report: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2, default=str) + "\n")


def print_report(report: dict, console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"ad build: {report['model']}", show_lines=False)
    for col, just in (("#", "right"), ("transform", "left"), ("stage", "left"), ("enabled", "center"),
                      ("matches", "right"), ("time (s)", "right"), ("note / skipped reason", "left")):
        table.add_column(col, justify=just)
    verify = report.get("verify")
    if verify:
        table.add_column("verify rel err", justify="right")
    for r in report["transforms"]:
        matches = "-" if not r["enabled"] else ("skipped" if r["skipped"] else str(r["num_matches"]))
        row = [str(r["position"]), r["name"], r["stage"], "yes" if r["enabled"] else "no", matches,
               f"{r['time_s']:.3f}", r["error"] or r["note"]]
        if verify:
            v = r.get("verify")
            row.append("" if not v else f"{v['max_rel_err']:.1e} {'ok' if v['ok'] else 'FAIL'}")
        table.add_row(*row)
    console.print(table)
    nodes = report["graph_nodes"]
    console.print(f"graph size: {nodes['after_export']} ops after export -> {nodes['final']} ops final; "
                  f"build time {report['total_time_s']:.2f}s")
    from rich.markup import escape

    for row in report.get("coverage", []):
        style = "green" if row["found"] == row["expected"] and not row.get("hint") else "yellow"
        console.print(f"[{style}]{row['kind']} {row['found']}/{row['expected']}[/{style}]"
                      + (f"  {escape(row['detail'])}" if row.get("detail") else "")
                      + (f"  {escape(row['hint'])}" if row.get("hint") else ""))
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
    if verify:
        if verify["ok"]:
            console.print("[green]verify: every transform matches the HF eager logits[/green]")
        else:
            console.print(f"[red]verify: first transform out of tolerance: {verify['first_failure']}[/red]")
