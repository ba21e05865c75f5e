"""kv_cache_config.mamba_ssm_cache_dtype (the anchor's key, now real): auto | float32, read from AutoDeploy files as
they write it (null = the default), a bad value fails with the key's path; the anchor's mixer backend names map."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autodeploy_cli.config.loader import resolve_with_report
from autodeploy_cli.errors import ADError


def _file(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "anchor.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_float32_is_kept_and_null_is_the_default(tmp_path):
    cfg, report = resolve_with_report([_file(tmp_path, {"kv_cache_config": {"mamba_ssm_cache_dtype": "float32"}})])
    assert cfg.kv_cache_config.mamba_ssm_cache_dtype == "float32" and report.warnings == []
    cfg, report = resolve_with_report([_file(tmp_path, {"kv_cache_config": {"mamba_ssm_cache_dtype": None}})])
    assert cfg.kv_cache_config.mamba_ssm_cache_dtype == "auto" and report.warnings == []
    assert report.notes == ["`kv_cache_config.mamba_ssm_cache_dtype: null` dropped: null is ad's `auto` (the model "
                            "dtype)."]


def test_bad_value_names_the_key():
    with pytest.raises(ADError, match="Invalid value `float16` for `kv_cache_config.mamba_ssm_cache_dtype`: choose one "
                                      "of auto, float32."):
        resolve_with_report(overrides=["kv_cache_config.mamba_ssm_cache_dtype=float16"])


def test_anchor_mixer_backend_names_map_to_ours(tmp_path):
    data = {"transforms": {"insert_cached_ssm_attention": {"backend": "triton_ssm"},
                           "insert_cached_causal_conv": {"backend": "cuda_causal_conv"},
                           "insert_cached_delta_rule": {"backend": "fla_delta"}}}
    cfg, report = resolve_with_report([_file(tmp_path, data)])
    assert [cfg.transforms[t]["backend"] for t in data["transforms"]] == ["triton"] * 3
    assert report.warnings == []
