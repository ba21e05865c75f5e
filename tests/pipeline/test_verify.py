"""`ad build --verify`: logits vs HF eager after every graph-changing transform; the first bad one is named."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.pipeline.build import build
from autodeploy_cli.graph.core import is_op
from autodeploy_cli.pipeline.interface import BaseTransform, TransformInfo


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_verify_passes_on_tiny_models(family, tiny_dir):
    result = build(resolve([], [f"model={tiny_dir(family)}", "skip_loading_weights=true"]), verify=True)
    verify = result.report["verify"]
    assert verify["ok"] and verify["first_failure"] is None
    checked = [row["transform"] for row in verify["rows"]]
    assert checked[0] == "export_to_gm" and "load_weights" in checked
    assert all(row["max_rel_err"] <= 1e-4 for row in verify["rows"] if row["check"] != "n/a")


@pytest.fixture
def wrong_transform(scratch_transforms):
    class SiluToRelu(BaseTransform):
        """A deliberately wrong rewrite: every SiLU becomes ReLU."""

        def apply(self, gm, ctx):
            n = 0
            for node in gm.graph.nodes:
                if is_op(node, torch.ops.aten.silu.default):
                    node.target = torch.ops.aten.relu.default
                    n += 1
            gm.recompile()
            return TransformInfo(num_matches=n, is_clean=True, has_valid_shapes=True)

    scratch_transforms("tst_silu_to_relu", SiluToRelu)


def test_verify_names_first_transform_out_of_tolerance(wrong_transform):
    cfg = resolve([], ["transforms.tst_silu_to_relu.stage=post_export"])
    result = build(cfg, verify=True)
    assert result.verify_failure == "tst_silu_to_relu"
    rows = {row["transform"]: row for row in result.report["verify"]["rows"]}
    assert rows["export_to_gm"]["ok"] and not rows["tst_silu_to_relu"]["ok"]
    assert rows["tst_silu_to_relu"]["max_rel_err"] > 1e-3
