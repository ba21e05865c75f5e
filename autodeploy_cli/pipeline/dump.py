"""Graph dumps: one text file per pipeline entry, `NNN_<stage>_<transform>.txt`, each node with shape and dtype."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from torch import fx, nn

from autodeploy_cli.errors import ADError
from autodeploy_cli.graph.core import op_name

DUMP_ENV = "AD_DUMP_GRAPHS_DIR"
_MARKER = ".ad_dump_graphs"  # written into dump dirs we create, so we may clear them later


def _shape_dtype(val: Any) -> tuple[str, str]:
    if isinstance(val, (list, tuple)):
        parts = [_shape_dtype(v) for v in val]
        return "(" + ", ".join(p[0] for p in parts) + ")", "(" + ", ".join(p[1] for p in parts) + ")"
    shape = getattr(val, "shape", None)
    if shape is None:
        return ("scalar", type(val).__name__) if isinstance(val, (int, float, bool)) else ("?", "N/A")
    dims = "x".join(str(d) for d in shape) if len(shape) else "scalar"
    return dims, str(getattr(val, "dtype", "N/A"))


def _fmt_arg(a: Any) -> str:
    if isinstance(a, fx.Node):
        return f"%{a.name}"
    if isinstance(a, (list, tuple)):
        inner = ", ".join(_fmt_arg(x) for x in a)
        return f"[{inner}]" if isinstance(a, list) else f"({inner})"
    if isinstance(a, dict):
        return "{" + ", ".join(f"{k}: {_fmt_arg(v)}" for k, v in a.items()) + "}"
    return repr(a)


def format_graph(gm: fx.GraphModule) -> str:
    """SSA-style text: `%n = op(%a, 3, dim=1) : 2xs0x64 : torch.float32`."""
    lines = []
    for node in gm.graph.nodes:
        shape, dtype = _shape_dtype(node.meta.get("val"))
        if node.op == "placeholder":
            lines.append(f"%{node.name} : {shape} : {dtype}")
        elif node.op == "output":
            lines.append(f"output {_fmt_arg(node.args[0])}")
        elif node.op == "get_attr":
            lines.append(f"%{node.name} = get_attr[{node.target}] : {shape} : {dtype}")
        else:
            args = [_fmt_arg(a) for a in node.args] + [f"{k}={_fmt_arg(v)}" for k, v in node.kwargs.items()]
            lines.append(f"%{node.name} = {op_name(node)}({', '.join(args)}) : {shape} : {dtype}")
    return "\n".join(lines) + "\n"


def prepare_dump_dir(path: str | Path, force: bool = False, from_env: bool = False) -> Path:
    """Create (or clear) the dump dir. A non-empty dir we did not create is never deleted without `force`.
    `from_env`: the path came from AD_DUMP_GRAPHS_DIR (the messages name that, not `--out`/`--force`)."""
    p = Path(path)
    where = f"{DUMP_ENV}={p}" if from_env else f"--out {p}"
    if p.exists() and not p.is_dir():
        raise ADError(f"Graph dump path `{p}` ({where}) exists and is not a directory; pick another path.")
    if p.is_dir() and any(p.iterdir()):
        if not (p / _MARKER).exists() and not force:
            fix = (f"point {DUMP_ENV} at an empty or new directory, or delete its contents yourself" if from_env
                   else "pick an empty or new directory, or pass --force to replace its contents")
            raise ADError(
                f"Graph dump directory `{p}` ({where}) is not empty and was not created by `ad`; refusing to delete "
                f"its files. To dump graphs, {fix}."
            )
        shutil.rmtree(p)
    p.mkdir(parents=True, exist_ok=True)
    (p / _MARKER).write_text("created by ad dump-graphs; safe to delete\n")
    return p


def dump_dir_from_env() -> str | None:
    return os.environ.get(DUMP_ENV) or None


class GraphDumper:
    """Writes one file per pipeline entry into a prepared directory."""

    def __init__(self, directory: Path):
        self.directory = directory

    def write(self, position: int, stage: str, name: str, model: nn.Module | None, status: str) -> Path:
        path = self.directory / f"{position:03d}_{stage}_{name}.txt"
        header = [f"# Transform: {name}", f"# Stage: {stage}", f"# Status: {status}"]
        if isinstance(model, fx.GraphModule):
            body = format_graph(model)
            header.append(f"# Nodes: {len(model.graph.nodes)}")
        else:
            kind = type(model).__name__ if model is not None else "nothing yet"
            body = f"(no graph yet: the model is a {kind})\n"
        path.write_text("\n".join(header) + "\n" + "=" * 80 + "\n" + body)
        return path
