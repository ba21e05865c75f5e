"""fuse_moe: torch_moe over per-expert weights becomes the fused MoE op over stacked [E, 2I, h] / [E, h, I] weights
(a view of transformers' stacked tensors when their layout allows, a copy otherwise); per-expert weights are gone."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.ops import load_ops
from tests.transforms.fusion_helpers import apply, assert_same_function, loaded, ops

load_ops()
MOE = torch.ops.auto_deploy.torch_moe.default


def _fused_nodes(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and "moe_fused" in str(n.target)]


def _fresh(tiny_dir, family: str):
    """(gm, ctx) right after load_weights, not a deep copy (a copy would clone every per-expert view)."""
    from autodeploy_cli.config.loader import resolve
    from autodeploy_cli.pipeline.build import build

    cfg = resolve([], [f"model={tiny_dir(family)}", "skip_loading_weights=true", "dtype=float32", "device=cpu"])
    result = build(cfg, stop_after="load_weights")
    return result.model, result.ctx


def test_qwen3_moe_stacks_as_a_view_of_the_checkpoint_tensors(tiny_dir):
    gm, ctx = _fresh(tiny_dir, "qwen3_moe")
    ref, _ = loaded(tiny_dir, "qwen3_moe")
    assert ops(gm, MOE) == 2
    gate0 = gm.get_parameter("model.layers.0.mlp.experts.0.gate_proj.weight")
    down1 = gm.get_parameter("model.layers.0.mlp.experts.1.down_proj.weight")
    info = apply("fuse_moe", gm, ctx, backend="torch")
    assert info.num_matches == 2 and info.note == "backend torch"
    assert ops(gm, MOE) == 0 and ops(gm, torch.ops.auto_deploy.torch_moe_fused.default) == 2
    w13 = gm.get_parameter("model.layers.0.mlp.experts.w13_weight")
    w2 = gm.get_parameter("model.layers.0.mlp.experts.w2_weight")
    assert w13.shape == (4, 2 * 32, 64) and w2.shape == (4, 64, 32)
    assert w13.data_ptr() == gate0.data_ptr() and w2[1].data_ptr() == down1.data_ptr()  # no copy
    assert torch.equal(w13[0, :32], gate0)
    assert not [n for n, _ in gm.named_parameters() if "_proj.weight" in n and ".experts." in n]
    node = _fused_nodes(gm)[0]
    assert node.kwargs["act"] == "silu" and node.kwargs["gated"] and node.kwargs["b13"] is None
    assert_same_function(ref, gm)  # two input shapes
    assert apply("fuse_moe", gm, ctx, backend="torch").num_matches == 0  # applied twice: nothing new


def test_gpt_oss_transposed_interleaved_layout_is_copied_with_biases(tiny_dir):
    gm, ctx = loaded(tiny_dir, "gpt_oss")
    ref, _ = loaded(tiny_dir, "gpt_oss")
    with torch.no_grad():  # HF initialises expert biases to zero: give them values that matter
        for name, p in list(gm.named_parameters()):
            if ".experts." in name and name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.5)
                ref.get_parameter(name).copy_(p)
    b_up0 = gm.get_parameter("model.layers.1.mlp.experts.0.up_proj.bias").clone()
    info = apply("fuse_moe", gm, ctx, backend="torch")
    assert info.num_matches == 2
    node = _fused_nodes(gm)[1]
    assert node.kwargs["act"] == "swiglu_oai" and node.kwargs["b13"] is not None and node.kwargs["b2"] is not None
    b13 = gm.get_parameter("model.layers.1.mlp.experts.w13_bias")
    assert b13.shape == (4, 2 * 96) and torch.equal(b13[0, 96:], b_up0)  # gate rows first, then up
    assert gm.get_parameter("model.layers.1.mlp.experts.w13_weight").is_contiguous()
    assert_same_function(ref, gm)


def test_triton_backend_op_and_unknown_backend(tiny_dir):
    from autodeploy_cli.errors import ADError

    gm, ctx = loaded(tiny_dir, "qwen3_moe")
    assert apply("fuse_moe", gm, ctx, backend="triton").num_matches == 2
    assert ops(gm, torch.ops.auto_deploy.triton_moe_fused.default) == 2
    with pytest.raises(ADError, match="Invalid value `cutlass` for `transforms.fuse_moe.backend`: choose one of auto, "
                                      "torch, triton."):
        apply("fuse_moe", gm, ctx, backend="cutlass")


def test_graph_without_moe_is_unchanged(tiny_dir):
    gm, ctx = loaded(tiny_dir)
    before = gm.code
    info = apply("fuse_moe", gm, ctx)
    assert info.num_matches == 0 and info.note == "no torch_moe to fuse" and gm.code == before
