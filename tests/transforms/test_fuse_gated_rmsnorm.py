"""fuse_gated_rmsnorm: the canonical gated norm becomes the Triton kernel (interpreted on CPU); logits unchanged."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before kernels.triton is imported anywhere in this process
    os.environ.setdefault("TRITON_INTERPRET", "1")
from torch import fx, nn

from autodeploy_cli.graph.core import count_ops
from autodeploy_cli.pipeline.registry import build_options
from tests.transforms.mixer_helpers import built_until_weights
from tests.transforms.pattern_helpers import max_rel_err
from transforms.fuse_gated_rmsnorm import FuseGatedRmsnorm

ops = torch.ops.auto_deploy


def _apply(gm, ctx, backend="triton"):
    return FuseGatedRmsnorm(build_options("fuse_gated_rmsnorm", {"stage": "post_load_fusion",
                                                                 "backend": backend})).apply(gm, ctx)


@pytest.fixture(scope="module")
def built(tiny_dir):
    return built_until_weights(tiny_dir("bamba"))


def test_swaps_the_gated_norm_and_keeps_the_logits(built):
    result, hf = built
    gm, ctx = result.model, result.ctx
    assert _apply(gm, ctx, "torch").num_matches == 0  # torch: the reference op stays
    info = _apply(gm, ctx)
    gm.recompile()
    assert info.num_matches == 1 and count_ops(gm, ops.torch_rmsnorm_gated) == 0
    assert count_ops(gm, ops.triton_rmsnorm_gated) == 1
    assert max_rel_err(gm, hf, ctx, shapes=((2, 7), (1, 11))) < 1e-5
    assert _apply(gm, ctx).num_matches == 0  # applied twice


def test_graph_without_gated_norm_is_untouched(built):
    result, _ = built
    gm = fx.symbolic_trace(nn.Sequential(nn.Linear(4, 4)))
    before = str(gm.graph)
    assert _apply(gm, result.ctx).num_matches == 0 and str(gm.graph) == before
