"""Stored facts stay true: params.yaml equals the meta-model counts, and each entry's world size is the planner's
recommendation for an H200 (141 GB) at the entry's max_seq_len and max_batch_size."""

from __future__ import annotations

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.planner import make_plan
from model_registry import PARAMS_FILE, load_registry

import importlib.util
from pathlib import Path

_tool = Path(__file__).resolve().parents[2] / "model_registry" / "tools" / "update_params.py"
_spec = importlib.util.spec_from_file_location("update_params", _tool)
update_params = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(update_params)  # type: ignore[union-attr]


def test_params_file_matches_the_meta_models():
    assert PARAMS_FILE.read_text() == update_params.render(update_params.compute())


def test_world_size_is_the_planners_recommendation_on_an_h200():
    plans: dict[tuple, int | None] = {}
    for name, entry in load_registry().items():
        if entry.get("unsupported") or entry.get("local_dir"):
            continue
        cfg = resolve(model=name)
        key = (entry["arch"], cfg.max_seq_len, cfg.max_batch_size)
        if key not in plans:
            plans[key] = make_plan(cfg, "141GB").recommended
        assert plans[key] == entry["world_size"], name
