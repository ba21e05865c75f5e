"""optimize_rope: each layer's q/k RoPE becomes one Triton launch over the graph's shared cos/sin."""

from __future__ import annotations

import torch

from tests.transforms.fusion_helpers import apply, assert_same_function, loaded, ops


def test_triton_rope_replaces_each_layer(tiny_dir):
    ref, _ = loaded(tiny_dir)
    gm, ctx = loaded(tiny_dir)
    src = torch.ops.auto_deploy.torch_rope_with_explicit_cos_sin.default
    assert ops(gm, src) == 2
    assert apply("optimize_rope", gm, ctx, backend="triton").num_matches == 2
    assert ops(gm, src) == 0
    assert ops(gm, torch.ops.auto_deploy.triton_rope_with_explicit_cos_sin.default) == 2
    assert_same_function(ref, gm)
    assert apply("optimize_rope", gm, ctx, backend="triton").num_matches == 0


def test_torch_backend_keeps_the_reference(tiny_dir):
    gm, ctx = loaded(tiny_dir)
    assert apply("optimize_rope", gm, ctx, backend="torch").num_matches == 0


def test_triton_rope_replaces_deepseeks_interleaved_rope(tiny_dir):
    ref, _ = loaded(tiny_dir, "deepseek_v3")  # MLA layers: q_pe / k_pe RoPE on rotated pairs, bsnd
    gm, ctx = loaded(tiny_dir, "deepseek_v3")
    src = torch.ops.auto_deploy.torch_rope_with_qk_interleaving.default
    assert ops(gm, src) == 2
    assert apply("optimize_rope", gm, ctx, backend="triton").num_matches == 2
    assert ops(gm, src) == 0
    assert ops(gm, torch.ops.auto_deploy.triton_rope_with_qk_interleaving.default) == 2
    assert_same_function(ref, gm)
    assert apply("optimize_rope", gm, ctx, backend="triton").num_matches == 0
