"""insert_cached_mla_attention: every torch_mla becomes the backend's paged MLA over two compressed caches per layer
(ckv [pages, page, kv_lora_rank], kpe [pages, page, rope]); logits unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.errors import ADError
from autodeploy_cli.graph.core import count_ops
from autodeploy_cli.models.factory import ModelFactory
from autodeploy_cli.ops.mla_interface import get_mla_backend
from autodeploy_cli.pipeline.build import build
from autodeploy_cli.pipeline.registry import build_options
from tests.tiny_models import MLA
from transforms.insert_cached_mla_attention import InsertCachedMlaAttention

OPTS = {"stage": "cache_init"}


@pytest.fixture(scope="module")
def built(tiny_dir):
    cfg = resolve([], [f"model={tiny_dir('deepseek_v3')}", "skip_loading_weights=true", "dtype=float32",
                       "attn_page_size=4", "max_seq_len=32"])
    result = build(cfg, stop_after="load_weights")
    first = next(n for n in result.model.graph.nodes if n.target == torch.ops.auto_deploy.torch_mla.default)
    for arg in first.args[:5]:
        arg.meta.pop("val", None)  # as a transform that forgot shapes would leave it: the transform propagates them
    info = InsertCachedMlaAttention(build_options("insert_cached_mla_attention", OPTS)).apply(result.model,
                                                                                              result.ctx)
    result.model.recompile()
    hf = ModelFactory(cfg).materialize()
    return result, hf, info


def test_replaces_every_mla_with_compressed_caches(built):
    result, _, info = built
    gm, iface = result.model, result.ctx.cache
    r, rope, layers = MLA["kv_lora_rank"], MLA["qk_rope_head_dim"], MLA["num_hidden_layers"]
    assert info.num_matches == 2
    assert info.note == (f"backend torch, compressed KV: kv_lora_rank {r} + rope {rope} per token and layer, "
                         f"{layers * (r + rope) * 4} bytes per token (float32)")
    assert count_ops(gm, torch.ops.auto_deploy.torch_mla) == 0
    assert count_ops(gm, torch.ops.auto_deploy.torch_mla_with_paged_cache) == 2
    assert count_ops(gm, torch.ops.auto_deploy.torch_attention_prepare_metadata) == 1  # once per forward
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    assert names == iface.input_names == [
        "input_ids", "position_ids", "seq_len", "input_pos", "batch_info_host", "cu_seqlen", "cache_loc",
        "cu_num_pages", "pages_per_seq", "ckv_cache_0", "kpe_cache_0", "ckv_cache_1", "kpe_cache_1"]
    assert iface.cache_specs["ckv_cache_1"].page_shape == (4, r)  # no head dimension
    assert iface.cache_specs["kpe_cache_1"].page_shape == (4, rope)
    # the pool costs the compressed (r + rope) values per token and layer: not 2 x heads x head dims
    assert iface.bytes_per_page() == 4 * layers * (r + rope) * 4
    assert result.ctx.probe is not None


@pytest.mark.parametrize("shape", [(2, 7), (1, 13)])
def test_prefill_through_the_cache_matches_hf(built, shape):
    result, hf, _ = built
    ids = torch.randint(0, 320, shape, generator=torch.Generator().manual_seed(shape[1]))
    pos = torch.arange(shape[1]).expand(shape)
    got = result.ctx.cache.run_prefill(result.model, ids, pos)  # pages of 4: 13 tokens span 4 pages
    with torch.no_grad():
        want = hf(input_ids=ids, position_ids=pos).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_applied_twice_finds_nothing(built):
    result, _, _ = built
    info = InsertCachedMlaAttention(build_options("insert_cached_mla_attention", OPTS)).apply(result.model,
                                                                                              result.ctx)
    assert info.num_matches == 0 and info.note == "no torch_mla nodes"


def test_graph_without_mla_is_untouched(built):
    result, _, _ = built
    gm = fx.symbolic_trace(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    before = str(gm.graph)
    info = InsertCachedMlaAttention(build_options("insert_cached_mla_attention", OPTS)).apply(gm, result.ctx)
    assert info.num_matches == 0 and str(gm.graph) == before


def test_backend_errors():
    with pytest.raises(ADError, match="Invalid value `flashnfer` for `transforms.insert_cached_mla_attention.backend`:"
                                      " choose one of auto, torch, triton, flashinfer. Did you mean `flashinfer`?"):
        build_options("insert_cached_mla_attention", {**OPTS, "backend": "flashnfer"})
    with pytest.raises(ADError, match=r"Unknown mla backend `trch` \(mla_backend\).*Did you mean `torch`?"):
        get_mla_backend("trch")
    assert get_mla_backend("torch").cached_op() is torch.ops.auto_deploy.torch_mla_with_paged_cache.default


def test_mla_backend_shortcut_and_anchor_names():
    cfg = resolve([], ["mla_backend=triton"])
    assert cfg.transforms["insert_cached_mla_attention"]["backend"] == "triton" and cfg.mla_backend == "triton"
    assert resolve([], []).mla_backend == "auto"
    anchor = resolve([], ["transforms.insert_cached_mla_attention.backend=flashinfer_mla"])
    assert anchor.transforms["insert_cached_mla_attention"]["backend"] == "flashinfer"
    v1 = resolve([], ["transforms.insert_cached_mla_attention.backend=MultiHeadLatentAttention"])
    assert v1.transforms["insert_cached_mla_attention"]["backend"] == "flashinfer"
    assert resolve([], ["mla_backend=torch_mla"]).mla_backend == "torch"
