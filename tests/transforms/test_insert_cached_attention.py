"""insert_cached_attention: every torch_attention becomes the backend's paged cached attention; logits unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.errors import ADError
from autodeploy_cli.models.factory import ModelFactory
from autodeploy_cli.ops.attention_interface import get_attention_backend
from autodeploy_cli.pipeline.build import build
from autodeploy_cli.graph.core import count_ops
from autodeploy_cli.pipeline.registry import build_options
from transforms.insert_cached_attention import InsertCachedAttention

OPTS = {"stage": "cache_init"}


@pytest.fixture(scope="module")
def built(tiny_dir):
    cfg = resolve([], [f"model={tiny_dir('qwen3')}", "skip_loading_weights=true", "dtype=float32", "attn_page_size=4",
                       "max_seq_len=32"])
    result = build(cfg, stop_after="load_weights")
    first = next(n for n in result.model.graph.nodes if n.target == torch.ops.auto_deploy.torch_attention.default)
    for arg in first.args[:3]:
        arg.meta.pop("val")  # as a transform that forgot shapes would leave it: the transform propagates them
    info = InsertCachedAttention(build_options("insert_cached_attention", OPTS)).apply(result.model, result.ctx)
    result.model.recompile()
    hf = ModelFactory(cfg).materialize()
    return result, hf, info


def test_replaces_every_attention(built):
    result, _, info = built
    gm, iface = result.model, result.ctx.cache
    assert info.num_matches == 2 and info.note == "backend torch, page size 4, kv float32"
    assert count_ops(gm, torch.ops.auto_deploy.torch_attention) == 0
    assert count_ops(gm, torch.ops.auto_deploy.torch_attention_with_paged_cache) == 2
    assert count_ops(gm, torch.ops.auto_deploy.torch_attention_prepare_metadata) == 1  # once per forward
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    assert names == iface.input_names == [
        "input_ids", "position_ids", "seq_len", "input_pos", "batch_info_host", "cu_seqlen", "cache_loc",
        "cu_num_pages", "pages_per_seq", "k_cache_0", "v_cache_0", "k_cache_1", "v_cache_1"]
    spec = iface.cache_specs["k_cache_1"]
    assert spec.page_shape == (4, 2, 16) and spec.dtype == torch.float32  # page_size, n_kv_heads, head_dim
    assert result.ctx.probe is not None


@pytest.mark.parametrize("shape", [(2, 7), (1, 13)])
def test_prefill_through_the_cache_matches_hf(built, shape):
    result, hf, _ = built
    ids = torch.randint(0, 320, shape, generator=torch.Generator().manual_seed(shape[1]))
    pos = torch.arange(shape[1]).expand(shape)
    got = result.ctx.cache.run_prefill(result.model, ids, pos)  # pages of 4: 13 tokens span 4 pages
    with torch.no_grad():
        want = hf(input_ids=ids.to(hf.device), position_ids=pos.to(hf.device)).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_applied_twice_finds_nothing(built):
    result, _, _ = built
    info = InsertCachedAttention(build_options("insert_cached_attention", OPTS)).apply(result.model, result.ctx)
    assert info.num_matches == 0 and info.note == "no torch_attention nodes"


def test_graph_without_attention_is_untouched(built):
    result, _, _ = built
    gm = fx.symbolic_trace(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    before = str(gm.graph)
    info = InsertCachedAttention(build_options("insert_cached_attention", OPTS)).apply(gm, result.ctx)
    assert info.num_matches == 0 and str(gm.graph) == before


def test_backend_errors():
    with pytest.raises(ADError, match="Invalid value `flashnfer` for `transforms.insert_cached_attention.backend`: "
                                      "choose one of auto, torch, triton, flashinfer. Did you mean `flashinfer`?"):
        build_options("insert_cached_attention", {**OPTS, "backend": "flashnfer"})
    with pytest.raises(ADError, match="Unknown attention backend `trch`.*Did you mean `torch`?"):
        get_attention_backend("trch")
    assert get_attention_backend("torch").cached_op() is torch.ops.auto_deploy.torch_attention_with_paged_cache.default
