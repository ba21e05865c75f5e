"""Stored facts stay true: params.yaml equals the meta-model counts, and each entry's world size is the planner's
recommendation for an H200 (141 GB) at the entry's max_seq_len and max_batch_size."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.commands.plan import make_plan
from model_registry import PARAMS_FILE, load_architectures, load_registry

_tool = Path(__file__).resolve().parents[2] / "model_registry" / "tools" / "update_params.py"
_spec = importlib.util.spec_from_file_location("update_params", _tool)
update_params = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(update_params)  # type: ignore[union-attr]


def test_params_and_world_sizes_match_the_meta_models_and_the_planner():
    plans: dict[tuple, object] = {}
    counts: dict[str, int] = {}
    for name, entry in load_registry().items():
        if entry.get("unsupported") or entry.get("local_dir"):
            continue
        cfg = resolve(model=name)
        key = (entry["arch"], cfg.max_seq_len, cfg.max_batch_size)
        if key not in plans:
            plans[key] = make_plan(cfg, "141GB")  # builds the meta model from the stored values
        plan = plans[key]
        counts[entry["arch"]] = plan.params
        assert plan.recommended == entry["world_size"], name
    # every stored architecture is used by an entry, so `counts` covers them all, in params.yaml's order
    ordered = {a: counts[a] for a in load_architectures() if not a.startswith("_")}
    assert PARAMS_FILE.read_text() == update_params.render(ordered)
