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


def _with_first_attention(tiny_dir, **kwargs):
    cfg = resolve([], [f"model={tiny_dir('qwen3')}", "skip_loading_weights=true", "dtype=float32", "max_seq_len=32"])
    result = build(cfg, stop_after="load_weights")
    first = next(n for n in result.model.graph.nodes if n.target == torch.ops.auto_deploy.torch_attention.default)
    _set(first, **kwargs)
    return result, first


def _set(node, **kwargs):
    """Set arguments by schema name, whether the node holds them positionally or by keyword."""
    names = [a.name for a in node.target._schema.arguments]
    args = list(node.args)
    for key, value in kwargs.items():
        if names.index(key) < len(args):
            args[names.index(key)] = value
        else:
            node.kwargs = {**node.kwargs, key: value}
    node.args = tuple(args)


def test_a_mask_it_cannot_apply_is_refused_with_what_it_is_and_what_would_be_needed(tiny_dir):
    result, first = _with_first_attention(tiny_dir)
    _set(first, attn_mask=first.args[0])  # any tensor: a mask the classifier kept
    first.meta["ad_mask_reason"] = "mask differs across the batch (padding)"
    with pytest.raises(ADError) as err:
        InsertCachedAttention(build_options("insert_cached_attention", OPTS)).apply(result.model, result.ctx)
    assert str(err.value) == (
        f"The attention of layer 0 (model.layers.0.self_attn, node `{first.name}`) takes an explicit attention mask "
        "that cached attention cannot apply: mask differs across the batch (padding). Cached attention expresses "
        "causal masks, sliding windows (`sliding_window`), ALiBi position biases (`alibi_slopes`), soft-capping "
        "(`logit_cap`) and sinks; a KV cache keeps keys and values only, so a mask that is none of these (padding, a "
        "mask computed from the activations, a custom pattern) has no cached form and ad cannot deploy this model. "
        "It would need that mask as an option of `auto_deploy::torch_attention` and of the cached backends (for a "
        "per-key bias: a cache beside the keys).")


def test_non_causal_attention_is_refused(tiny_dir):
    result, first = _with_first_attention(tiny_dir, is_causal=False)
    with pytest.raises(ADError, match=r"The attention of layer 0 \(model.layers.0.self_attn, node `.*`\) is not "
                                      r"causal \(every token sees the tokens after it"):
        InsertCachedAttention(build_options("insert_cached_attention", OPTS)).apply(result.model, result.ctx)


def test_a_backend_without_alibi_is_refused_by_name():
    from autodeploy_cli.ops.attention_interface import AttentionDescriptor, AttentionNodeInfo

    class NoAlibi(AttentionDescriptor):
        name = "noalibi"

    info = AttentionNodeInfo(0, 4, 4, 16, 16, torch.float32, None, None, None, None, alibi_slopes=object())
    assert NoAlibi.refusal(info) == "ALiBi position biases (alibi_slopes) are not implemented by the `noalibi` backend"
    assert get_attention_backend("torch").refusal(info) is None
    assert NoAlibi.constant_kwargs(info) == {"alibi_slopes": info.alibi_slopes}
