"""fuse_moe: the canonical MoE ops (torch_moe_stacked from the export patch, torch_moe over per-expert lists) become
the fused MoE op over stacked [E, 2I, h] / [E, h, I] weights: a view of transformers' stacked tensors when their
layout allows (no copy), a per-layer copy otherwise; the source weights are gone afterwards."""

from __future__ import annotations

import copy

import pytest
import torch

from autodeploy_cli.ops import load_ops
from tests.transforms.fusion_helpers import apply, assert_same_function, ops

load_ops()
AD = torch.ops.auto_deploy
SOURCES = (AD.torch_moe.default, AD.torch_moe_stacked.default)


def _fresh(tiny_dir, family: str, *overrides: str):
    """(gm, ctx, ref) right after load_weights; gm is not a deep copy (a copy would clone every view), ref is."""
    from autodeploy_cli.config.loader import resolve
    from autodeploy_cli.pipeline.build import build

    cfg = resolve([], [f"model={tiny_dir(family)}", "skip_loading_weights=true", "dtype=float32", "device=cpu",
                       *overrides])
    result = build(cfg, stop_after="load_weights")
    return result.model, result.ctx, copy.deepcopy(result.model)


def _fused_nodes(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and "moe_fused" in str(n.target)]


def _expert_weights(gm) -> list[str]:
    return [n for n, _ in gm.named_parameters() if ".experts." in n and not n.endswith(("w13_weight", "w2_weight"))]


@pytest.mark.parametrize("form,overrides", [
    ("stacked", ()),  # default: the export patch's torch_moe_stacked over views of gate_up_proj / down_proj
    ("lists", ("transforms.export_to_gm.patches.hf_experts_to_torch_moe=false",)),  # matcher: per-expert lists
])
def test_qwen3_moe_fuses_as_a_view_of_the_checkpoint_tensors(tiny_dir, form, overrides):
    gm, ctx, ref = _fresh(tiny_dir, "qwen3_moe", *overrides)
    assert ops(gm, SOURCES[0 if form == "lists" else 1]) == 2
    src = (gm.get_parameter("model.layers.0.mlp.experts.0.gate_proj.weight") if form == "lists"
           else gm.get_parameter("model.layers.0.mlp.experts.gate_up_proj"))
    info = apply("fuse_moe", gm, ctx, backend="torch")
    assert info.num_matches == 2 and info.note == "backend torch"
    assert ops(gm, SOURCES) == 0 and ops(gm, AD.torch_moe_fused.default) == 2
    w13 = gm.get_parameter("model.layers.0.mlp.experts.w13_weight")
    assert w13.shape == (4, 2 * 32, 64)
    assert gm.get_parameter("model.layers.1.mlp.experts.w2_weight").shape == (4, 64, 32)
    assert w13.data_ptr() == src.data_ptr()  # no copy
    assert _expert_weights(gm) == []  # the per-expert / stacked sources are dropped
    node = _fused_nodes(gm)[0]
    assert node.kwargs["act"] == "silu" and node.kwargs["gated"] and node.kwargs["b13"] is None
    assert_same_function(ref, gm)  # two input shapes
    assert apply("fuse_moe", gm, ctx, backend="torch").num_matches == 0  # applied twice: nothing new


def test_gpt_oss_transposed_interleaved_layout_is_copied_with_biases(tiny_dir):
    gm, ctx, ref = _fresh(tiny_dir, "gpt_oss")
    with torch.no_grad():  # HF initialises expert biases to zero: give them values that matter
        for name, p in gm.named_parameters():
            if ".experts." in name and name.endswith("_bias"):
                p.copy_(torch.randn_like(p) * 0.5)
                ref.get_parameter(name).copy_(p)
    up_bias1 = gm.get_parameter("model.layers.1.mlp.experts.gate_up_proj_bias")[0, 1::2].clone()
    info = apply("fuse_moe", gm, ctx, backend="torch")
    assert info.num_matches == 2
    node = _fused_nodes(gm)[1]
    assert node.kwargs["act"] == "swiglu_oai" and node.kwargs["b13"] is not None and node.kwargs["b2"] is not None
    b13 = gm.get_parameter("model.layers.1.mlp.experts.w13_bias")
    assert b13.shape == (4, 2 * 96) and torch.equal(b13[0, 96:], up_bias1)  # gate rows first, then up
    w13 = gm.get_parameter("model.layers.1.mlp.experts.w13_weight")
    assert w13.shape == (4, 2 * 96, 64) and w13.is_contiguous()
    assert sorted(_expert_weights(gm)) == [f"model.layers.{i}.mlp.experts.{b}" for i in (0, 1)
                                           for b in ("w13_bias", "w2_bias")]  # gate_up_proj & co. are dropped
    assert_same_function(ref, gm)


def test_lifted_per_expert_parameters_fuse_too(tiny_dir):
    gm, ctx, ref = _fresh(tiny_dir, "qwen3_moe", "transforms.match_moe_pattern.lift_stacked_experts=true")
    assert ops(gm, AD.torch_moe.default) == 2 and ops(gm, AD.torch_moe_stacked.default) == 0
    assert apply("fuse_moe", gm, ctx, backend="torch").num_matches == 2
    assert_same_function(ref, gm)


def test_triton_backend_op_and_unknown_backend(tiny_dir):
    from autodeploy_cli.errors import ADError

    gm, ctx, _ = _fresh(tiny_dir, "qwen3_moe")
    assert apply("fuse_moe", gm, ctx, backend="triton").num_matches == 2
    assert ops(gm, AD.triton_moe_fused.default) == 2
    with pytest.raises(ADError, match="Invalid value `cutlass` for `transforms.fuse_moe.backend`: choose one of auto, "
                                      "torch, triton."):
        apply("fuse_moe", gm, ctx, backend="cutlass")


def test_graph_without_moe_is_unchanged(tiny_dir):
    from tests.transforms.fusion_helpers import loaded

    gm, ctx = loaded(tiny_dir)
    before = gm.code
    info = apply("fuse_moe", gm, ctx)
    assert info.num_matches == 0 and info.note == "no torch_moe to fuse" and gm.code == before
