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


# --- sharded graphs: each rank loads only its part (ranks are threads: tests/transforms/sharding_helpers.py) -------
def _logits_equal(graphs, hf_model):
    from tests.transforms.sharding_helpers import run_ranks

    ids = torch.randint(0, 320, (2, 6), generator=torch.Generator().manual_seed(3))
    pos = torch.arange(6).expand(2, 6)
    outs, _ = run_ranks(graphs, ids, pos)
    with torch.no_grad():
        want = hf_model(input_ids=ids, position_ids=pos).logits
    for out in outs:
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_each_rank_reads_only_its_slices_of_the_checkpoint(checkpoint_dir, monkeypatch):
    from autodeploy_cli.models import checkpoint
    from tests.transforms.sharding_helpers import rank_graphs

    read: list[tuple] = []
    original = checkpoint.LazyTensor.__getitem__
    monkeypatch.setattr(checkpoint.LazyTensor, "__getitem__",
                        lambda self, idx: read.append((self.key, idx)) or original(self, idx))
    path, hf_model = checkpoint_dir
    graphs, ctxs = rank_graphs(resolve([], [f"model={path}", "world_size=2", "device=cpu"]), 2)
    notes = [r.note for ctx in ctxs for r in ctx.records if r.name == "load_weights"]
    assert notes == [f"23 tensors from checkpoint on cpu: sliced reads of the checkpoint (rank {r} of 2)" for r in (0, 1)]
    q_reads = [idx for key, idx in read if key == "model.layers.0.self_attn.q_proj.weight"]
    assert q_reads == [(slice(0, 32),), (slice(32, 64),)]  # rows of rank 0, then of rank 1: never the whole
    _logits_equal(graphs, hf_model)


def test_module_by_module_random_init_gives_every_rank_slices_of_the_same_tensors(tiny_dir):
    from transformers import AutoModelForCausalLM

    from autodeploy_cli.models.factory import ModelFactory
    from autodeploy_cli.models.random_init import SeededModules
    from tests.transforms.sharding_helpers import rank_graphs

    cfg = resolve([], [f"model={tiny_dir('llama')}", "skip_loading_weights=true", "world_size=2", "device=cpu",
                       "transforms.load_weights.random_init=module"])
    graphs, ctxs = rank_graphs(cfg, 2)
    assert all("module-by-module seeded init" in r.note for c in ctxs for r in c.records if r.name == "load_weights")
    factory = ModelFactory(cfg)
    seeded = SeededModules(factory.build_meta_model(), torch.device("cpu"), cfg.seed)
    hf_model = AutoModelForCausalLM.from_config(tiny_hf_config("llama")).eval()
    hf_model.load_state_dict({n: seeded[n].clone() for n in hf_model.state_dict()})
    assert hf_model.model.norm.weight.eq(1).all()  # the model's own init: unit norms, normal linears
    _logits_equal(graphs, hf_model)
