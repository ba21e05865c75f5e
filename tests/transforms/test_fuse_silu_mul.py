"""fuse_silu_mul: silu(gate) * up over a fused gate|up GEMM becomes one op (torch reference or Triton)."""

from __future__ import annotations

import pytest
import torch

from tests.transforms.fusion_helpers import apply, assert_same_function, loaded, ops


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fuses_after_fuse_gemms(tiny_dir, backend):
    ref, _ = loaded(tiny_dir)
    gm, ctx = loaded(tiny_dir)
    apply("fuse_gemms", gm, ctx, on_cpu=True)
    info = apply("fuse_silu_mul", gm, ctx, backend=backend)
    assert info.num_matches == 2
    assert ops(gm, getattr(torch.ops.auto_deploy, f"{backend}_silu_and_mul").default) == 2
    assert ops(gm, torch.ops.aten.silu.default) == 0
    assert_same_function(ref, gm)
    assert apply("fuse_silu_mul", gm, ctx, backend=backend).num_matches == 0


def test_separate_gate_and_up_linears_are_left_alone(tiny_dir):
    gm, ctx = loaded(tiny_dir)
    assert apply("fuse_silu_mul", gm, ctx, backend="torch").num_matches == 0
    assert ops(gm, torch.ops.aten.silu.default) == 2
