"""fuse_add_rmsnorm: residual add + RMSNorm become one op returning (normed, sum)."""

from __future__ import annotations

import pytest
import torch

from tests.transforms.fusion_helpers import apply, assert_same_function, loaded, ops


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fuses_every_residual_norm(tiny_dir, backend):
    ref, _ = loaded(tiny_dir)
    gm, ctx = loaded(tiny_dir)
    norm = torch.ops.auto_deploy.torch_rmsnorm.default
    assert ops(gm, norm) == 5  # 2 per layer + final
    info = apply("fuse_add_rmsnorm", gm, ctx, backend=backend)
    assert info.num_matches == 4  # all but the first layer's input norm (it reads the embedding, no add)
    assert ops(gm, norm) == 1
    assert ops(gm, getattr(torch.ops.auto_deploy, f"{backend}_fused_add_rmsnorm").default) == 4
    assert_same_function(ref, gm)
    assert apply("fuse_add_rmsnorm", gm, ctx, backend=backend).num_matches == 0


def test_gemma_offset_form(tiny_dir):
    ref, _ = loaded(tiny_dir, "gemma")
    gm, ctx = loaded(tiny_dir, "gemma")
    assert apply("fuse_add_rmsnorm", gm, ctx, backend="triton").num_matches > 0
    assert_same_function(ref, gm)
