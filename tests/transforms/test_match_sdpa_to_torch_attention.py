"""match_sdpa_to_torch_attention: F.scaled_dot_product_attention becomes torch_attention; masks transformers builds
from the positions become flags, other masks stay."""

from __future__ import annotations

import torch
from torch import nn

from autodeploy_cli.ops import load_ops
from autodeploy_cli.graph.attention_mask import classify_mask
from tests.transforms.pattern_helpers import (
    count, export_tiny, export_toy, matches, max_rel_err, nodes_of, ops_in, run_transforms,
)

load_ops()
ATTN = torch.ops.auto_deploy.torch_attention.default
SDPA = torch.ops.aten.scaled_dot_product_attention.default


def test_hf_sdpa_with_boolean_causal_mask():
    tiny = export_tiny("gemma3", "sdpa")  # layer 0 sliding (window 4), layer 1 full
    records, ctx = run_transforms(tiny.gm, ["match_sdpa_to_torch_attention"])
    assert matches(records) == {"match_sdpa_to_torch_attention": 2}
    assert count(tiny.gm, SDPA) == 0
    attn = nodes_of(tiny.gm, ATTN)
    assert [(n.kwargs["is_causal"], n.kwargs["sliding_window"], n.kwargs["attn_mask"]) for n in attn] == [
        (True, 4, None), (True, None, None)]
    assert [n.kwargs["scale"] for n in attn] == [0.25, 0.25] and {n.kwargs["layout"] for n in attn} == {"bnsd"}
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5

    records, _ = run_transforms(tiny.gm, ["match_sdpa_to_torch_attention"])
    assert matches(records) == {"match_sdpa_to_torch_attention": 0}


class _MaskedSdpa(nn.Module):
    """SDPA with masks built from (input_ids, position_ids): causal, window 3, and bidirectional."""

    def forward(self, input_ids, position_ids):
        b, s = input_ids.shape
        x = torch.ones(b, 2, s, 8) * input_ids[:, None, :, None].float() * 0.01 + position_ids[:, None, :, None] * 0.1
        q_pos = position_ids[:, None, :, None]
        k_pos = position_ids[:, None, None, :]
        causal = k_pos <= q_pos
        window = causal & (q_pos - k_pos < 3)
        bidirectional = k_pos >= 0
        sdpa = nn.functional.scaled_dot_product_attention
        outs = [sdpa(x, x, x, attn_mask=m) for m in (causal, window, bidirectional)]
        return torch.cat(outs, dim=-1)


def test_masks_are_classified_by_evaluating_them():
    module = _MaskedSdpa()
    ids = torch.randint(0, 50, (2, 6))
    pos = torch.arange(6).expand(2, 6)
    gm = export_toy(module, ids, pos, dynamic={0: {0: "b", 1: "s"}, 1: {0: "b", 1: "s"}})
    masks = [n.args[3] for n in nodes_of(gm, SDPA)]
    infos = [classify_mask(gm, m) for m in masks]
    assert [(i.causal, i.sliding_window) for i in infos] == [(True, None), (True, 3), (False, None)]
    records, _ = run_transforms(gm, ["match_sdpa_to_torch_attention"])
    assert matches(records) == {"match_sdpa_to_torch_attention": 3}
    kept = [n.kwargs["attn_mask"] is not None for n in nodes_of(gm, ATTN)]
    assert kept == [False, False, True]
    ids = torch.randint(0, 50, (3, 9))
    pos = torch.arange(9).expand(3, 9)
    torch.testing.assert_close(gm(ids, pos), module(ids, pos), rtol=1e-5, atol=1e-5)


class _NoSdpa(nn.Module):
    def forward(self, x):
        return torch.relu(x) * 2


def test_graph_without_sdpa_is_unchanged():
    gm = export_toy(_NoSdpa(), torch.randn(2, 5), dynamic={0: {0: "b"}})
    before = ops_in(gm)
    records, _ = run_transforms(gm, ["match_sdpa_to_torch_attention"])
    assert matches(records) == {"match_sdpa_to_torch_attention": 0}
    assert ops_in(gm) == before


def test_falcon_alibi_folded_into_the_sdpa_mask_becomes_alibi_slopes():
    """Falcon (alibi=True): SDPA's float mask is masked_fill(alibi / sqrt(d), causal < -1, min); the evaluated mask is
    causal + slope x distance, so it becomes is_causal and alibi_slopes (HF's bf16-rounded slopes / sqrt(d))."""
    from transformers.models.falcon.modeling_falcon import build_alibi_tensor

    tiny = export_tiny("falcon_alibi", "sdpa")
    records, ctx = run_transforms(tiny.gm, ["match_sdpa_to_torch_attention"])
    assert matches(records) == {"match_sdpa_to_torch_attention": 2} and count(tiny.gm, SDPA) == 0
    attn = nodes_of(tiny.gm, ATTN)
    assert all(n.kwargs["attn_mask"] is None and n.kwargs["is_causal"] for n in attn)
    hf = build_alibi_tensor(torch.ones(1, 3, dtype=torch.long), 4, torch.float32)[:, 0, 1] / 4.0  # head_dim 16
    for n in attn:
        torch.testing.assert_close(ctx.weight_hooks[n.kwargs["alibi_slopes"].target]({"w": torch.ones(1)}), hf)
    import copy

    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(tiny.config)  # HF's eager Falcon adds ALiBi twice (logits and mask); its default, SDPA, once
    cfg._attn_implementation = "sdpa"
    ref = AutoModelForCausalLM.from_config(cfg).eval()
    ref.load_state_dict(tiny.ref.state_dict())
    assert max_rel_err(tiny.gm, ref, ctx) < 1e-5
