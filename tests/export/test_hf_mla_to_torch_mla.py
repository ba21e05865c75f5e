"""Export patch hf_mla_to_torch_mla: HF's MLA modules (DeepSeek-V2/V3 incl. yarn RoPE and q_lora_rank set / unset,
and the architectures reusing them) export as one auto_deploy::torch_mla per layer on the compressed KV, with
the same logits as HF eager; with the patch off they keep the expanded per-head K/V of plain attention."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.graph.core import count_ops
from autodeploy_cli.pipeline.build import build
from tests.tiny_models import YARN
from tests.transforms.pattern_helpers import PINNED, max_rel_err

# case -> (tiny family, config overrides, the canonical RoPE op the layer's RoPE becomes)
CASES = {
    "v2": ("deepseek_v2", {}, "complex_freqs"),
    "v2-yarn-q_lora": ("deepseek_v2", {**YARN, "q_lora_rank": 24}, "complex_freqs"),
    "v3": ("deepseek_v3", {}, "qk_interleaving"),
    "v3-yarn-q_lora_unset": ("deepseek_v3", {**YARN, "q_lora_rank": None}, "qk_interleaving"),
    "v3-rotate_half": ("deepseek_v3", {"rope_interleave": False}, "explicit_cos_sin"),
    "glm4_moe_lite": ("deepseek_v3", {"model_type": "glm4_moe_lite"}, "qk_interleaving"),  # GLM-4.7-Flash
    "minicpm3": ("deepseek_v3", {"model_type": "minicpm3"}, "explicit_cos_sin"),
    "youtu": ("deepseek_v3", {"model_type": "youtu"}, "qk_interleaving"),
}


def _export(tiny_dir, family, overrides, patch=True):
    cfg = resolve([], [f"model={tiny_dir(family, **overrides)}", "skip_loading_weights=true", *PINNED,
                       f"transforms.export_to_gm.patches.hf_mla_to_torch_mla={str(patch).lower()}"])
    result = build(cfg, stop_after="export_to_gm")
    ref = result.ctx.factory.materialize(torch.device("cpu"))
    ref.set_attn_implementation("eager")
    return result, ref


@pytest.mark.parametrize("case", list(CASES))
def test_mla_layers_export_as_torch_mla(tiny_dir, case):
    family, overrides, rope = CASES[case]
    result, ref = _export(tiny_dir, family, overrides)
    gm = result.model
    assert count_ops(gm, torch.ops.auto_deploy.torch_mla) == 2  # one per layer
    assert count_ops(gm, getattr(torch.ops.auto_deploy, f"torch_rope_with_{rope}")) == 2  # q_pe and k_pe, bsnd
    assert count_ops(gm, torch.ops.auto_deploy.torch_attention) == 0
    # kv_b_proj's weight is an argument of torch_mla only: no up-projection of the latent is left in the graph
    weights = [n.args[4] for n in gm.graph.nodes if n.target == torch.ops.auto_deploy.torch_mla.default]
    assert all(len(w.users) == 1 and "kv_b_proj" in str(w.target) for w in weights)
    assert "hf_mla_to_torch_mla" in result.ctx.facts.export_patches
    assert max_rel_err(gm, ref, result.ctx) < 1e-5  # shapes (2, 7), (3, 5) and (2, 1)


def test_yarn_mscale_lands_on_the_rope_part_and_the_scale(tiny_dir):
    result, ref = _export(tiny_dir, "deepseek_v3", YARN)
    attn = ref.model.layers[0].self_attn
    mla = next(n for n in result.model.graph.nodes if n.target == torch.ops.auto_deploy.torch_mla.default)
    # softmax scale: (nope + rope) ** -0.5 x mscale(factor, mscale_all_dim) ** 2 (HF's yarn_apply_mscale)
    mscale_all = 0.1 * 0.8 * torch.log(torch.tensor(4.0)).item() + 1.0
    assert mla.args[6] == pytest.approx(24 ** -0.5 * mscale_all ** 2) == attn.scaling
    # cos/sin (which only the RoPE halves of q and k see) carry mscale / mscale_all_dim
    assert ref.model.rotary_emb.attention_scaling == pytest.approx(
        (0.1 * torch.log(torch.tensor(4.0)).item() + 1.0) / mscale_all)


def test_patch_off_keeps_expanded_attention(tiny_dir):
    result, ref = _export(tiny_dir, "deepseek_v3", {}, patch=False)
    assert count_ops(result.model, torch.ops.auto_deploy.torch_mla) == 0
    assert count_ops(result.model, torch.ops.auto_deploy.torch_attention) == 2
    assert max_rel_err(result.model, ref, result.ctx) < 1e-5


def test_non_mla_model_is_not_touched(tiny_dir):
    result, _ = _export(tiny_dir, "llama", {})
    assert count_ops(result.model, torch.ops.auto_deploy.torch_mla) == 0
    assert count_ops(result.model, torch.ops.auto_deploy.torch_attention) == 2
