"""load_weights: real tensors from a save_pretrained checkpoint (or seeded random init) into the meta graph."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.errors import ADError
from autodeploy_cli.pipeline.build import build
from tests.tiny_models import tiny_hf_config, write_tiny_model_dir


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = write_tiny_model_dir(tmp_path_factory.mktemp("ckpt"), "llama")
    torch.manual_seed(123)
    model = AutoModelForCausalLM.from_config(tiny_hf_config("llama"))
    model.save_pretrained(path)
    return path, model.eval()


def test_loads_checkpoint_and_matches_hf(checkpoint_dir):
    path, hf_model = checkpoint_dir
    result = build(resolve([], [f"model={path}"]), stop_after="load_weights")
    row = next(r for r in result.report["transforms"] if r["name"] == "load_weights")
    assert row["note"].endswith("from checkpoint on cpu")
    gm = result.model
    assert all(p.device.type == "cpu" for p in gm.parameters())
    torch.testing.assert_close(gm.get_parameter("model.layers.1.mlp.up_proj.weight"),
                               hf_model.model.layers[1].mlp.up_proj.weight.detach())
    ids = torch.randint(0, 320, (2, 6))
    pos = torch.arange(6).expand(2, 6)
    with torch.no_grad():
        torch.testing.assert_close(gm(ids, pos), hf_model(input_ids=ids, position_ids=pos).logits, rtol=1e-5, atol=1e-5)


def test_random_init_is_seeded(tiny_dir):
    def weight(seed):
        r = build(resolve([], [f"model={tiny_dir('llama')}", "skip_loading_weights=true", f"seed={seed}"]))
        return r.model.get_parameter("model.layers.0.self_attn.q_proj.weight").clone()

    a, b, c = weight(1), weight(1), weight(2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_folder_without_weights_says_how_to_fix(tiny_dir):
    with pytest.raises(ADError, match="Could not load the weights from .*set `skip_loading_weights=true`"):
        build(resolve([], [f"model={tiny_dir('llama')}"]))
