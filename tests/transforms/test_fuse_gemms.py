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
