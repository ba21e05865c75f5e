"""fuse_rmsnorm: torch_rmsnorm -> triton_rmsnorm (backend triton); the torch backend keeps the reference op."""

from __future__ import annotations

import torch

from tests.transforms.fusion_helpers import apply, assert_same_function, loaded, ops


def test_triton_backend_replaces_every_norm(tiny_dir):
    ref, _ = loaded(tiny_dir)
    gm, ctx = loaded(tiny_dir)
    info = apply("fuse_rmsnorm", gm, ctx, backend="triton")
    assert info.num_matches == 5
    assert ops(gm, torch.ops.auto_deploy.torch_rmsnorm.default) == 0
    assert ops(gm, torch.ops.auto_deploy.triton_rmsnorm.default) == 5
    assert_same_function(ref, gm)
    assert apply("fuse_rmsnorm", gm, ctx, backend="triton").num_matches == 0


def test_torch_backend_keeps_the_reference(tiny_dir):
    gm, ctx = loaded(tiny_dir)
    assert apply("fuse_rmsnorm", gm, ctx, backend="auto").num_matches == 0  # auto on CPU = torch
    assert ops(gm, torch.ops.auto_deploy.torch_rmsnorm.default) == 5
