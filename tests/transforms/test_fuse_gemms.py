"""fuse_gemms: Q/K/V and gate/up linears sharing an input become one GEMM; originals are dropped."""

from __future__ import annotations

import torch

from tests.transforms.fusion_helpers import apply, assert_same_function, loaded, ops

LINEAR = torch.ops.aten.linear.default


def test_fuses_qkv_and_gate_up(tiny_dir):
    gm, ctx = loaded(tiny_dir)
    before = ops(gm, LINEAR)
    ref, _ = loaded(tiny_dir)
    info = apply("fuse_gemms", gm, ctx, on_cpu=True)
    assert info.num_matches == 4  # 2 layers x (qkv, gate|up)
    assert ops(gm, LINEAR) == before - 2 * (2 + 1)  # 3 -> 1 and 2 -> 1 per layer
    names = dict(gm.named_parameters())
    assert names["model.layers.0.self_attn.q_proj.weight_fused"].shape == (64 + 32 + 32, 64)
    assert names["model.layers.1.mlp.gate_proj.weight_fused"].shape == (2 * 96, 64)
    assert not any(n.endswith(("k_proj.weight", "v_proj.weight", "up_proj.weight")) for n in names)
    assert_same_function(ref, gm)
    assert apply("fuse_gemms", gm, ctx, on_cpu=True).num_matches == 0  # applied twice: nothing new


def test_cpu_builds_keep_separate_linears_by_default(tiny_dir):
    gm, ctx = loaded(tiny_dir)
    info = apply("fuse_gemms", gm, ctx)
    assert info.num_matches == 0 and "on_cpu" in info.note


def _fp8_loaded(model_dir):
    from autodeploy_cli.config.loader import resolve
    from autodeploy_cli.pipeline.build import build

    result = build(resolve([], [f"model={model_dir}", "device=cpu", "dtype=float32"]), stop_after="load_weights")
    return result.model, result.ctx


def test_fp8_groups_fuse_exactly_with_per_channel_scales(tmp_path):
    import copy

    from tests.quant_models import modelopt_dir

    gm, ctx = _fp8_loaded(modelopt_dir(tmp_path / "mo"))
    ref = copy.deepcopy(gm)
    fp8 = torch.ops.auto_deploy.torch_quant_fp8_linear.default
    info = apply("fuse_gemms", gm, ctx, on_cpu=True)
    assert info.num_matches == 4 and ops(gm, fp8) == 14 - 2 * (2 + 1)
    qkv = "model.layers.0.self_attn.q_proj.weight_fused"
    assert gm.get_parameter(qkv).shape == (128, 64) and gm.get_buffer(qkv + "_scale").shape == (128,)
    scales = [ref.get_buffer(f"model.layers.0.self_attn.{p}_proj.input_scale") for p in "qkv"]
    assert gm.get_buffer(qkv + "_input_scale") == max(scales)
    assert_same_function(ref, gm)  # the FP8 bytes are kept: exact
    assert "fuse_gemms" not in ctx.facts.lossy


def test_fp8_requantize_to_max_scale_is_marked_lossy(tmp_path):
    from tests.quant_models import modelopt_dir

    gm, ctx = _fp8_loaded(modelopt_dir(tmp_path / "mo"))
    w = {p: (gm.get_parameter(f"model.layers.1.mlp.{p}_proj.weight").clone(),
             gm.get_buffer(f"model.layers.1.mlp.{p}_proj.weight_scale").clone()) for p in ("gate", "up")}
    apply("fuse_gemms", gm, ctx, on_cpu=True, fp8_scales="max")
    fused = "model.layers.1.mlp.gate_proj.weight_fused"
    scale = gm.get_buffer(fused + "_scale")
    assert scale.shape == () and scale == max(s for _, s in w.values())
    biggest = max(w, key=lambda p: w[p][1])
    rows = slice(0, 96) if biggest == "gate" else slice(96, 192)
    assert torch.equal(gm.get_parameter(fused)[rows].view(torch.uint8), w[biggest][0].view(torch.uint8))
    assert "fuse_gemms" in ctx.facts.lossy  # --verify judges it with the quality gate


def test_block_fp8_groups_fuse_when_n_is_whole_blocks(tmp_path):
    import copy

    from tests.quant_models import hf_block_fp8_dir

    gm, ctx = _fp8_loaded(hf_block_fp8_dir(tmp_path / "hfb"))
    ref = copy.deepcopy(gm)
    assert apply("fuse_gemms", gm, ctx, on_cpu=True).num_matches == 4
    assert gm.get_buffer("model.layers.0.self_attn.q_proj.weight_fused_scale").shape == (4, 2)  # 64+32+32 rows
    assert_same_function(ref, gm)
