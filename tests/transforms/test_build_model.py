"""build_model: the HF model on the meta device, with model_kwargs applied to its config."""

from __future__ import annotations

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.pipeline.build import build


def test_builds_on_meta_with_model_kwargs(tiny_dir):
    cfg = resolve([], [f"model={tiny_dir('qwen3')}", "model_kwargs.num_hidden_layers=1",
                       "model_kwargs.rope_parameters.rope_theta=5000.0"])
    result = build(cfg, stop_after="build_model")
    model = result.model
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert all(p.device.type == "meta" for p in model.parameters())
    assert len(model.model.layers) == 1
    assert model.config.rope_parameters["rope_theta"] == 5000.0
    assert model.config.rope_parameters["rope_type"] == "default"  # deep override keeps sibling keys
    row = result.report["transforms"][0]
    assert row["name"] == "build_model" and "Qwen3ForCausalLM" in row["note"]
