"""Hybrid architectures end to end on CPU (tiny configs, random weights): `ad build --verify` passes with every
mixer a canonical op and then a cached op, `ad run` greedy tokens == HF generate for prompts of 1, 19 and 34 tokens
in one batch (SSD chunks of 8), and chunked prefill in 5-token chunks (boundaries off the SSD chunks) == HF."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from autodeploy_cli.cli import app
from tests.e2e.hf_match import check_ad_run, check_engine_chunked, overrides
from tests.tiny_models import HYBRIDS

# family -> cached mixer ops after the build (per layer kind: one SSM + conv per Mamba2 layer, delta rule + conv
# per Gated DeltaNet layer)
CACHED = {
    "nemotron_h": {"torch_cached_ssm": 1, "torch_cached_causal_conv1d": 1, "torch_attention_with_paged_cache": 1},
    "bamba": {"torch_cached_ssm": 1, "torch_cached_causal_conv1d": 1, "torch_attention_with_paged_cache": 1},
    "granitemoehybrid": {"torch_cached_ssm": 1, "torch_cached_causal_conv1d": 1,
                         "torch_attention_with_paged_cache": 1},
    "mamba2": {"torch_cached_ssm": 2, "torch_cached_causal_conv1d": 2},
    "qwen3_next": {"torch_cached_gated_delta_rule": 1, "torch_cached_causal_conv1d": 1,
                   "torch_attention_with_paged_cache": 1},
}


@pytest.mark.parametrize("family", HYBRIDS)
def test_build_verify_then_run_matches_hf(tiny_dir, tmp_path, family):
    model = tiny_dir(family)
    report = tmp_path / "build.json"
    result = CliRunner().invoke(app, ["build", "--verify", "--report", str(report),
                                      *overrides(model, family, "attn_page_size=4")])
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    rows = doc["verify"]["rows"]
    assert rows and all(r["ok"] for r in rows)
    assert {r["transform"] for r in rows} >= {"export_to_gm", "insert_cached_causal_conv", "initialize_cache"}
    ops = {k.split(".", 1)[-1]: v for k, v in doc["canonical_ops"].items()}
    assert {k: ops.get(k) for k in CACHED[family]} == CACHED[family]
    assert not {"torch_ssm", "torch_causal_conv1d", "torch_gated_delta_rule"} & set(ops)
    check_ad_run(model, family, "attn_page_size=4")


@pytest.mark.parametrize("family", ["nemotron_h", "mamba2", "qwen3_next"])
def test_chunked_prefill_off_the_ssd_chunks_matches_hf(tiny_dir, family):
    check_engine_chunked(tiny_dir(family), family, "attn_page_size=4", "max_num_tokens=5")
