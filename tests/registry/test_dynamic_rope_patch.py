"""Export patch `dynamic_rope_static`: dynamic NTK RoPE (InternLM3-style) exports and matches HF eager."""

from __future__ import annotations

import pytest

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.pipeline.build import build
from tests.tiny_models import write_tiny_model_dir

DYNAMIC = {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0}


def _cfg(path, *extra):
    return resolve(overrides=["device=cpu", "dtype=float32", "skip_loading_weights=true", *extra], model=str(path))


def test_dynamic_rope_exports_with_base_frequencies(tmp_path):
    path = write_tiny_model_dir(tmp_path / "m", "llama", rope_parameters=DYNAMIC, max_position_embeddings=64)
    result = build(_cfg(path), verify=True, stop_after="export_to_gm")
    assert "dynamic_rope_static" in result.ctx.facts.export_patches
    (row,) = result.report["verify"]["rows"]
    assert row["transform"] == "export_to_gm" and row["max_rel_err"] < 1e-5


def test_without_the_patch_export_hits_the_data_dependent_branch(tmp_path):
    path = write_tiny_model_dir(tmp_path / "m", "llama", rope_parameters=DYNAMIC, max_position_embeddings=64)
    with pytest.raises(Exception, match="data-dependent"):
        build(_cfg(path, "transforms.export_to_gm.patches.dynamic_rope_static=false"), stop_after="export_to_gm")
