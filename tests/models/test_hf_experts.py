"""The materialised HF model runs experts that work for their shapes: grouped_mm unless its alignment rule fails."""

from __future__ import annotations

import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.models.factory import ModelFactory
from autodeploy_cli.models.hf_experts import grouped_mm_unaligned


def _factory(tiny_dir, *extra, **overrides) -> ModelFactory:
    model_dir = tiny_dir("qwen3_moe", **overrides)
    return ModelFactory(resolve([], [f"model={model_dir}", "skip_loading_weights=true", "dtype=float32",
                                     "device=cpu", *extra]))


def test_unaligned_experts_switch_to_eager_and_run(tiny_dir):
    factory = _factory(tiny_dir, hidden_size=60, moe_intermediate_size=30)
    model = factory.materialize()
    assert grouped_mm_unaligned(model) == "model.layers.0.mlp.experts.down_proj (4, 60, 30)"  # 30 * 4 bytes
    assert model.config._experts_implementation == "eager"
    assert factory.hf_config()._experts_implementation != "eager"  # the export's config is not touched
    with torch.no_grad():
        assert model(torch.tensor([[3, 4, 5]])).logits.shape == (1, 3, 320)


def test_aligned_experts_and_a_user_choice_are_kept(tiny_dir):
    assert _factory(tiny_dir).materialize().config._experts_implementation == "grouped_mm"
    chosen = _factory(tiny_dir, "model_kwargs._experts_implementation=batched_mm", hidden_size=60,
                      moe_intermediate_size=30)
    assert chosen.materialize().config._experts_implementation == "batched_mm"
