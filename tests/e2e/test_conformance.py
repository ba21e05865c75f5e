"""Conformance matrix: 11 HF architectures (tiny random-weight configs) become canonical ops.

Path (b), the matchers: the export patches off (attention and experts), attn_implementation eager and sdpa (Gemma2
has no SDPA in HF); every layer's attention, RoPE, RMSNorm (and MoE) must become canonical ops (exact counts), no
source pattern may be left, and the logits must equal HF eager within 1e-4 at two shapes and for a batch of
one-token sequences.
The default path (the export patch on) and `ad build --verify` for every family: test_conformance_build.py.
A deliberately broken RMSNorm is not matched and the report's hint names it.
"""

from __future__ import annotations

import types

import pytest
import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.pipeline.build import build
from autodeploy_cli.graph.core import op_name
from tests.transforms.pattern_helpers import PATTERN_STAGE, PINNED, max_rel_err, repeat_kv_chains

MOE_FAMILIES = {"mixtral", "qwen2_moe", "qwen3_moe"}
RMSNORMS = {"llama": 5, "mistral": 5, "qwen2": 5, "qwen3": 9, "phi3": 5, "gemma": 5, "gemma2": 9, "gemma3": 13,
            "mixtral": 5, "qwen2_moe": 5, "qwen3_moe": 9}  # 2 per layer + final (+ q/k norms, + Gemma2/3 extras)
FAMILIES = list(RMSNORMS)
SOURCE_OPS = {"aten.scaled_dot_product_attention", "auto_deploy.torch_attention_repeat_kv", "aten.rsqrt",
              "aten.neg", "aten.view_as_complex", "aten.bmm", "aten._grouped_mm", "transformers.grouped_mm_fallback",
              "aten.histc"}


def expected(family: str) -> dict[str, int]:
    counts = {"attention": 2, "rope": 2, "rmsnorm": RMSNORMS[family]}
    if family in MOE_FAMILIES:
        counts["moe"] = 2
    return counts


def census(gm) -> dict[str, int]:
    names = [op_name(n) for n in gm.graph.nodes if n.op == "call_function"]
    return {
        "attention": names.count("auto_deploy.torch_attention"),
        "rope": sum(n.startswith("auto_deploy.torch_rope_") for n in names),
        "rmsnorm": names.count("auto_deploy.torch_rmsnorm"),
        "moe": names.count("auto_deploy.torch_moe"),
    }


MATRIX = [(f, a) for f in FAMILIES for a in ("eager", "sdpa") if not (f == "gemma2" and a == "sdpa")]


@pytest.mark.parametrize("family,attn", MATRIX, ids=[f"{f}-{a}" for f, a in MATRIX])
def test_matchers_make_every_block_canonical(family, attn, tiny_dir):
    # MoE families: transformers' default grouped_mm with eager attention, batched_mm with sdpa (both covered)
    experts = ("grouped_mm" if attn == "eager" else "batched_mm") if family in MOE_FAMILIES else None
    overrides = [f"model={tiny_dir(family)}", "skip_loading_weights=true", *PINNED,
                 "transforms.export_to_gm.patches.hf_attention_to_torch_attention=false",
                 "transforms.export_to_gm.patches.hf_experts_to_torch_moe=false",
                 f"model_kwargs._attn_implementation={attn}"]
    overrides += [f"model_kwargs._experts_implementation={experts}"] if experts else []
    result = build(resolve([], overrides), stop_after=PATTERN_STAGE[-1])
    gm, facts = result.model, result.ctx.facts

    want = expected(family)
    found = census(gm)
    assert {k: found[k] for k in want} == want and found["moe"] == want.get("moe", 0)
    left = {op_name(n) for n in gm.graph.nodes if n.op == "call_function"} & SOURCE_OPS
    assert not left and repeat_kv_chains(gm) == 0
    assert not [n for n in gm.graph.nodes if op_name(n) == "aten.softmax.int" and n.meta["val"].dim() == 4]
    layouts = {n.kwargs["layout"] for n in gm.graph.nodes if op_name(n) == "auto_deploy.torch_attention"}
    assert layouts == {"bsnd"}
    if family in MOE_FAMILIES:
        assert facts.moe_experts_implementation == experts
    rows = {r["kind"]: (r["found"], r["expected"], r["hint"]) for r in result.report["coverage"]}
    assert rows == {k: (v, v, "") for k, v in want.items()}

    ref = result.ctx.factory.materialize(torch.device("cpu"))  # the same seeded weights, HF eager attention
    ref.set_attn_implementation("eager")
    assert max_rel_err(gm, ref, result.ctx) < 1e-4  # shapes (2, 7), (3, 5) and (2, 1)


def _broken_rmsnorm(self, x):
    """Layer 0's input RMSNorm without the `+ eps`: not the HF pattern, so it must not be matched."""
    xf = x.float()
    return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True))).to(x.dtype)


def test_broken_rmsnorm_is_named_in_the_report(tiny_dir, monkeypatch):
    from autodeploy_cli.models.factory import ModelFactory

    original = ModelFactory._from_config

    def from_config(self):
        model = original(self)
        norm = model.model.layers[0].input_layernorm
        norm.forward = types.MethodType(_broken_rmsnorm, norm)
        return model

    monkeypatch.setattr(ModelFactory, "_from_config", from_config)
    result = build(resolve([], [f"model={tiny_dir('llama')}", "skip_loading_weights=true", *PINNED]), verify=True)
    assert result.verify_failure is None  # unmatched blocks stay as they were: still correct
    row = next(r for r in result.report["coverage"] if r["kind"] == "rmsnorm")
    assert (row["found"], row["expected"]) == (4, 5)
    assert row["hint"].startswith("not matched in layer 0 (1/2); model.layers.0.input_layernorm: rsqrt input is "
                                  "`mean.dim`, not mean(x^2) + eps (no eps add) (chain seen: ")
    assert row["hint"].endswith("pow.Tensor_Scalar -> mean.dim -> rsqrt)")
