"""Export patch falcon_linear_as_linear: Falcon's `input @ weight.T + bias` linears export as aten.linear (same
values), so the graph shape-propagates with dynamic dims on CUDA and the linear passes see Falcon's projections."""

from __future__ import annotations

import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.export.library.falcon_linear_as_linear import falcon_linear_as_linear
from autodeploy_cli.graph.core import count_ops, shape_prop
from autodeploy_cli.pipeline.build import build
from tests.tiny_models import tiny_hf_config
from tests.transforms.pattern_helpers import PINNED, export_toy


def _falcon_linear(bias: bool):
    from transformers.models.falcon.modeling_falcon import FalconLinear

    torch.manual_seed(0)
    return FalconLinear(16, 24, bias=bias)


def test_values_and_capture_and_restore():
    for bias in (True, False):
        lin, x = _falcon_linear(bias), torch.randn(2, 5, 16)
        want = lin(x)
        with falcon_linear_as_linear(lin):
            gm = export_toy(lin, x, dynamic={0: {0: "b", 1: "s"}})
        assert "forward" not in vars(lin)  # the class's own forward again
        assert count_ops(gm, torch.ops.aten.linear.default) == 1 and count_ops(gm, torch.ops.aten.matmul.default) == 0
        shape_prop(gm)
        torch.testing.assert_close(gm(x), want)
        x2 = torch.randn(3, 2, 16)  # a second shape
        torch.testing.assert_close(gm(x2), lin(x2))


def test_falcon_builds_with_linears_and_no_matmul(tiny_dir):
    from transformers import FalconForCausalLM

    assert any(type(m).__name__ == "FalconLinear" for m in FalconForCausalLM(tiny_hf_config("falcon_alibi")).modules())
    result = build(resolve([], [f"model={tiny_dir('falcon_alibi')}", "skip_loading_weights=true", *PINNED,
                                "max_seq_len=64", "max_batch_size=4"]), verify=False, stop_after="export_to_gm")
    gm = result.model
    assert count_ops(gm, torch.ops.aten.matmul.default) == 0
    assert count_ops(gm, torch.ops.aten.linear.default) == 2 * 4 + 1  # qkv, dense, h_to_4h, 4h_to_h per layer; lm_head
    assert "falcon_linear_as_linear" in result.ctx.facts.export_patches
