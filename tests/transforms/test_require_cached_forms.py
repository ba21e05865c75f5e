"""require_cached_forms: a graph that still mixes tokens outside a cached form after cache_init is refused (one
paragraph per construct); a fully cached graph passes unchanged, also when checked twice."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.errors import ADError
from autodeploy_cli.graph.token_mixers import find_uncached_mixers
from autodeploy_cli.pipeline.build import build
from autodeploy_cli.pipeline.registry import build_options
from tests.transforms.pattern_helpers import ops_in
from transforms.require_cached_forms import RequireCachedForms

BASE = ["skip_loading_weights=true", "device=cpu", "dtype=float32", "max_seq_len=64", "attn_page_size=4"]


def _until_check(tiny_dir, family, *extra):
    """The graph right before require_cached_forms (everything up to gather_logits_before_lm_head)."""
    return build(resolve([], [f"model={tiny_dir(family)}", *BASE, *extra]), stop_after="gather_logits_before_lm_head")


def _apply(result):
    return RequireCachedForms(build_options("require_cached_forms", {"stage": "cache_init"})).apply(
        result.model, result.ctx)


def test_cached_graph_passes_unchanged_twice(tiny_dir):
    result = _until_check(tiny_dir, "llama")
    before = ops_in(result.model)
    for _ in range(2):
        info = _apply(result)
        assert info.num_matches == 0 and info.is_clean and info.note == "every token mixer has a cached form"
    assert ops_in(result.model) == before


def test_short_convolution_is_refused_with_layer_and_need(tiny_dir):
    result = _until_check(tiny_dir, "lfm2", "transforms.match_causal_conv.enabled=false")  # else it is cached
    (mixer,) = find_uncached_mixers(result.model, set(result.ctx.cache.cache_specs))
    assert (mixer.kind, mixer.layer, mixer.where) == ("conv", 0, "model.layers.0.conv")
    with pytest.raises(ADError) as err:
        _apply(result)
    first, _, rest = str(err.value).partition(" (`transforms.require_cached_forms.enabled=false`")
    assert "\n" not in str(err.value) and rest == " skips this check, for inspecting the graph only.)"
    assert first == (
        "ad cannot deploy this model correctly: a convolution sliding over the tokens (`aten.conv1d`, a short causal "
        "convolution) whose state no cache keeps, in layer 0: model.layers.0.conv (node conv1d). With a KV cache the "
        "runtime feeds each step only the new tokens of all running sequences, so this would mix the sequences of a "
        "batch and lose each one's history: the generated tokens would differ from the model's after the first. It "
        "needs a canonical causal-conv op with a cached form (the state-space mixers' `insert_cached_causal_conv`).")


def test_attention_without_a_cached_form_is_refused(tiny_dir):
    """insert_cached_attention disabled: the canonical attention ops are left uncached."""
    result = _until_check(tiny_dir, "llama", "transforms.insert_cached_attention.enabled=false")
    mixers = find_uncached_mixers(result.model, set())
    assert [(m.kind, m.layer) for m in mixers] == [("canonical", 0), ("canonical", 1)]
    with pytest.raises(ADError, match=r"the canonical op `auto_deploy::torch_attention` has no cached form in this "
                                      r"build, in layers 0, 1: .* It needs the transform that caches it, "
                                      r"`transforms.insert_cached_attention`"):
        _apply(result)


def test_unconverted_attention_is_refused_once_per_layer(tiny_dir):
    """The attention matchers off: GPT-2's attention stays as matmul/softmax, reported once per module."""
    off = [f"transforms.{t}.enabled=false" for t in ("match_eager_attention", "match_sdpa_to_torch_attention")]
    result = _until_check(tiny_dir, "gpt2", *off, "transforms.export_to_gm.patches.hf_attention_to_torch_attention"
                          "=false", "model_kwargs._attn_implementation=eager")
    kinds = [(m.kind, m.layer) for m in find_uncached_mixers(result.model, set())]
    assert kinds.count(("scores", 0)) == 1 and kinds.count(("scores", 1)) == 1
    with pytest.raises(ADError, match="attention outside the canonical attention op"):
        _apply(result)


def test_scan_and_positions_from_the_length_are_flagged():
    """A cumsum over the sequence dim (a linear-attention state) and positions made by arange(seq) instead of read
    from position_ids, in a toy graph whose input_ids are [b, s]."""
    from tests.transforms.pattern_helpers import export_toy

    class Scan(torch.nn.Module):
        def forward(self, input_ids, position_ids):
            x = input_ids.float().unsqueeze(-1) * 0.5 + position_ids.unsqueeze(-1)  # position_ids: fine
            pos = torch.arange(input_ids.shape[1]).float()  # wrong in a flattened batch
            return x.cumsum(1) + x.sum(-1, keepdim=True) + pos[None, :, None]  # the feature sum is per token

    gm = export_toy(Scan(), torch.ones(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.long),
                    dynamic={0: {0: "b", 1: "s"}, 1: {0: "b", 1: "s"}})
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    assert names == ["input_ids", "position_ids"]
    mixers = find_uncached_mixers(gm, set())
    assert sorted(m.kind for m in mixers) == ["positions", "scan"]
