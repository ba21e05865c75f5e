"""insert_cached_ssm_attention: every torch_ssm becomes the backend's cached SSM over state slots; logits unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from autodeploy_cli.errors import ADError
from autodeploy_cli.graph.core import count_ops
from autodeploy_cli.ops.mixer_interface import get_mixer_backend
from autodeploy_cli.pipeline.registry import build_options
from tests.transforms.mixer_helpers import built_until_weights, prefill_matches_hf
from transforms.insert_cached_ssm_attention import InsertCachedSsmAttention

OPTS = {"stage": "cache_init"}
ops = torch.ops.auto_deploy


def _apply(gm, ctx):
    return InsertCachedSsmAttention(build_options("insert_cached_ssm_attention", OPTS)).apply(gm, ctx)


@pytest.fixture(scope="module")
def built(tiny_dir):
    result, hf = built_until_weights(tiny_dir("mamba2"))
    info = _apply(result.model, result.ctx)
    result.model.recompile()
    return result, hf, info


def test_replaces_every_ssm(built):
    result, _, info = built
    gm, iface = result.model, result.ctx.cache
    assert info.num_matches == 2 and info.note == "backend torch, state [8, 16, 16] float32"
    assert count_ops(gm, ops.torch_ssm) == 0 and count_ops(gm, ops.torch_cached_ssm) == 2
    assert count_ops(gm, ops.torch_mixer_prepare_metadata) == 1  # once per forward
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    assert names == iface.input_names == ["input_ids", "position_ids", "batch_info_host", "cu_seqlen_host",
                                          "input_pos", "slot_idx", "ssm_state_0", "ssm_state_1"]
    spec = iface.state_specs["ssm_state_1"]
    assert spec.slot_shape == (8, 16, 16) and spec.dtype == torch.float32  # heads, head_dim, state size
    assert iface.num_slots == iface.info.max_batch_size + 1  # + the CUDA-graph scratch slot


def test_prefill_matches_hf_on_two_shapes(built):
    result, hf, _ = built  # the convs are still canonical: the probe runs one sequence per forward
    prefill_matches_hf(result, hf)


def test_applied_twice_finds_nothing(built):
    result, _, _ = built
    info = _apply(result.model, result.ctx)
    assert info.num_matches == 0 and info.note == "no torch_ssm nodes"


def test_graph_without_ssm_is_untouched(built):
    result, _, _ = built
    gm = fx.symbolic_trace(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    before = str(gm.graph)
    assert _apply(gm, result.ctx).num_matches == 0 and str(gm.graph) == before


@pytest.mark.parametrize("ssm_dtype, want", [("auto", torch.bfloat16), ("float32", torch.float32)])
def test_state_dtype_follows_mamba_ssm_cache_dtype(tiny_dir, ssm_dtype, want):
    result, _ = built_until_weights(tiny_dir("mamba2"), "dtype=bfloat16",
                                    f"kv_cache_config.mamba_ssm_cache_dtype={ssm_dtype}")
    _apply(result.model, result.ctx)
    assert result.ctx.cache.state_specs["ssm_state_0"].dtype == want


def test_auto_follows_the_models_own_ssm_cache_dtype(tiny_dir):
    """Nemotron-H's config names mamba_ssm_cache_dtype=float32: `auto` keeps its SSM state in float32 on a bf16
    model, while the conv state stays in the model dtype."""
    result, _ = built_until_weights(tiny_dir("nemotron_h"), "dtype=bfloat16")
    _apply(result.model, result.ctx)
    assert result.ctx.cache.state_specs["ssm_state_0"].dtype == torch.float32


def test_backend_errors():
    with pytest.raises(ADError, match="Invalid value `trition` for `transforms.insert_cached_ssm_attention.backend`: "
                                      "choose one of auto, torch, triton. Did you mean `triton`?"):
        build_options("insert_cached_ssm_attention", {**OPTS, "backend": "trition"})
    with pytest.raises(ADError, match="Unknown ssm backend `flashinfer`"):
        get_mixer_backend("ssm", "flashinfer")
    assert get_mixer_backend("ssm", "torch").cached_op() is ops.torch_cached_ssm.default
