"""insert_cached_causal_conv: every torch_causal_conv1d becomes the backend's cached conv over conv-state slots."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from autodeploy_cli.graph.core import count_ops
from autodeploy_cli.pipeline.registry import build_options
from tests.transforms.mixer_helpers import built_until_weights, prefill_matches_hf
from transforms.insert_cached_causal_conv import InsertCachedCausalConv

OPTS = {"stage": "cache_init"}
ops = torch.ops.auto_deploy


def _apply(gm, ctx):
    return InsertCachedCausalConv(build_options("insert_cached_causal_conv", OPTS)).apply(gm, ctx)


@pytest.fixture(scope="module")
def built(tiny_dir):
    result, hf = built_until_weights(tiny_dir("qwen3_next"))  # the conv of a Gated DeltaNet layer
    info = _apply(result.model, result.ctx)
    result.model.recompile()
    return result, hf, info


def test_replaces_every_conv(built):
    result, _, info = built
    gm, iface = result.model, result.ctx.cache
    assert info.num_matches == 1 and info.note == "backend torch"
    assert count_ops(gm, ops.torch_causal_conv1d) == 0 and count_ops(gm, ops.torch_cached_causal_conv1d) == 1
    conv = next(n for n in gm.graph.nodes if n.target == ops.torch_cached_causal_conv1d.default)
    assert conv.args[-1] == "silu"
    spec = iface.state_specs["conv_state_0"]
    assert spec.slot_shape == (128, 3) and spec.dtype == torch.float32  # q, k (2 x 32) + v (64) channels, K - 1
    assert count_ops(gm, ops.torch_gated_delta_rule) == 1  # other mixers are left to their own transform


def test_prefill_matches_hf_on_two_shapes(built):
    result, hf, _ = built
    prefill_matches_hf(result, hf)


def test_applied_twice_finds_nothing(built):
    result, _, _ = built
    info = _apply(result.model, result.ctx)
    assert info.num_matches == 0 and info.note == "no torch_causal_conv1d nodes"


def test_graph_without_conv_is_untouched(built):
    result, _, _ = built
    gm = fx.symbolic_trace(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    before = str(gm.graph)
    assert _apply(gm, result.ctx).num_matches == 0 and str(gm.graph) == before
