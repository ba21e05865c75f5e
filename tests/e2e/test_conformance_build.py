"""Conformance, the default path: `ad build --verify` (whole pipeline, export patch on) for every family of the
matrix; each transform's logits match HF eager and the report's coverage rows are complete. Three families go
through the real CLI (one with the patch off and eager attention, one with the batched_mm experts and the experts
export patch off)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.pipeline.build import build
from tests.e2e.test_conformance import FAMILIES, MOE_FAMILIES, expected
from tests.transforms.pattern_helpers import PINNED

CLI_CASES = {
    "llama": [],
    "gemma2": ["transforms.export_to_gm.patches.hf_attention_to_torch_attention=false",
               "model_kwargs._attn_implementation=eager"],
    "qwen2_moe": ["model_kwargs._experts_implementation=batched_mm",
                  "transforms.export_to_gm.patches.hf_experts_to_torch_moe=false"],
}


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in CLI_CASES or f == "gemma2"])
def test_default_build_verifies_and_reports_full_coverage(family, tiny_dir):
    result = build(resolve([], [f"model={tiny_dir(family)}", "skip_loading_weights=true", *PINNED]), verify=True)
    assert result.verify_failure is None
    assert result.report["verify"]["ok"] and len(result.report["verify"]["rows"]) >= 10
    rows = {r["kind"]: (r["found"], r["expected"], r["hint"]) for r in result.report["coverage"]}
    assert rows == {k: (v, v, "") for k, v in expected(family).items()}
    assert "hf_attention_to_torch_attention" in result.ctx.facts.export_patches
    if family in MOE_FAMILIES:
        moe = next(r for r in result.report["coverage"] if r["kind"] == "moe")
        assert moe["detail"] == "experts implementation: export patch (HF config: grouped_mm)"
        assert "hf_experts_to_torch_moe" in result.ctx.facts.export_patches


@pytest.mark.parametrize("family", list(CLI_CASES))
def test_ad_build_verify_cli(family, tiny_dir):
    from autodeploy_cli.cli import app

    args = ["build", f"model={tiny_dir(family)}", "skip_loading_weights=true", *PINNED, *CLI_CASES[family],
            "--verify"]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "verify: every transform matches HF (logits, and generation once cached)" in result.output
    for kind, n in expected(family).items():
        assert f"{kind} {n}/{n}" in result.output
    if family == "qwen2_moe":
        assert "experts implementation: batched_mm (HF config: batched_mm)" in result.output
