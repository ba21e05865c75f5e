"""insert_cached_delta_rule: every torch_gated_delta_rule becomes the backend's cached op over delta-state slots;
with every cache transform applied the cached graph's prefill equals HF (one flat batch of both sequences)."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from autodeploy_cli.graph.core import count_ops
from autodeploy_cli.pipeline.registry import build_options
from tests.transforms.mixer_helpers import built_until_weights, prefill_matches_hf
from transforms.insert_cached_attention import InsertCachedAttention
from transforms.insert_cached_causal_conv import InsertCachedCausalConv
from transforms.insert_cached_delta_rule import InsertCachedDeltaRule

OPTS = {"stage": "cache_init"}
ops = torch.ops.auto_deploy


def _apply(gm, ctx):
    return InsertCachedDeltaRule(build_options("insert_cached_delta_rule", OPTS)).apply(gm, ctx)


@pytest.fixture(scope="module")
def built(tiny_dir):
    result, hf = built_until_weights(tiny_dir("qwen3_next"))
    info = _apply(result.model, result.ctx)
    result.model.recompile()
    return result, hf, info


def test_replaces_every_delta_rule(built):
    result, _, info = built
    gm, iface = result.model, result.ctx.cache
    assert info.num_matches == 1 and info.note == "backend torch, state [4, 16, 16] float32"
    assert count_ops(gm, ops.torch_gated_delta_rule) == 0 and count_ops(gm, ops.torch_cached_gated_delta_rule) == 1
    node = next(n for n in gm.graph.nodes if n.target == ops.torch_cached_gated_delta_rule.default)
    assert node.args[-2:] == (None, True)  # scale, q/k L2-norm
    assert iface.state_specs["delta_state_0"].slot_shape == (4, 16, 16)  # value heads, key dim, value dim


def test_prefill_matches_hf_on_two_shapes(built):
    result, hf, _ = built
    prefill_matches_hf(result, hf)


def test_all_caches_share_one_metadata_node_and_run_as_one_flat_batch(tiny_dir):
    result, hf = built_until_weights(tiny_dir("qwen3_next"))
    gm, ctx = result.model, result.ctx
    for cls, name in ((InsertCachedAttention, "insert_cached_attention"),
                      (InsertCachedCausalConv, "insert_cached_causal_conv"), (InsertCachedDeltaRule,
                                                                              "insert_cached_delta_rule")):
        cls(build_options(name, OPTS)).apply(gm, ctx)
    gm.recompile()
    assert count_ops(gm, ops.torch_mixer_prepare_metadata) == 1
    prefill_matches_hf(result, hf)  # no canonical op left: both sequences of (2, 7) in one forward


def test_applied_twice_finds_nothing(built):
    result, _, _ = built
    info = _apply(result.model, result.ctx)
    assert info.num_matches == 0 and info.note == "no torch_gated_delta_rule nodes"


def test_graph_without_delta_rule_is_untouched(built):
    result, _, _ = built
    gm = fx.symbolic_trace(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    before = str(gm.graph)
    assert _apply(gm, result.ctx).num_matches == 0 and str(gm.graph) == before
