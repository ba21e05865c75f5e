"""llama4_temperature_from_positions: Llama-4's NoPE-layer query temperature follows the real positions.

With floor_scale 2 the scale changes every two positions, so a decode step computed from arange(seq) (position 0)
would differ from HF: the build's generation check (decode steps over a cached context) and `ad run` vs HF
generate both see it. Without the patch the build is refused, naming the arange.
"""

from __future__ import annotations

import pytest

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.errors import ADError
from autodeploy_cli.pipeline.build import build
from tests.e2e.hf_match import check_ad_run

TUNED = dict(attn_temperature_tuning=True, floor_scale=2, attn_scale=0.5, no_rope_layers=[1, 0])


def _cfg(model_dir, *extra):
    return resolve([], [f"model={model_dir}", "skip_loading_weights=true", "dtype=float32", "max_seq_len=64",
                        "max_batch_size=4", "attn_page_size=4", *extra])


def test_tuned_nope_layer_verifies_and_runs_like_hf(tiny_dir):
    model_dir = tiny_dir("llama4_text", **TUNED)
    result = build(_cfg(model_dir), verify=True)
    assert result.verify_failure is None
    assert any(r["check"] == "generation" for r in result.report["verify"]["rows"])
    check_ad_run(model_dir, "llama4_text")


def test_without_the_patch_the_arange_positions_are_refused(tiny_dir):
    model_dir = tiny_dir("llama4_text", **TUNED)
    with pytest.raises(ADError, match=r"positions computed from the number of tokens \(`arange\(seq\)`\)"):
        build(_cfg(model_dir, "transforms.export_to_gm.patches.llama4_temperature_from_positions=false"))
