"""Capture: the exported graph (meta weights, dynamic batch/seq) equals HF eager once weights are loaded."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.pipeline.build import build
from autodeploy_cli.graph.core import retarget_device_kwargs
from autodeploy_cli.models.weights import assign_weights, source_tensors

FAMILIES = ["llama", "qwen3", "phi3", "gemma", "mixtral",
            "falcon", "gpt_neo", "bloom", "xglm", "gpt2"]  # own attention code, meta-created constants, baddbmm
SHAPES = [(2, 7), (3, 1), (1, 5)]


@pytest.mark.parametrize("family", FAMILIES)
def test_export_equals_eager(family, tiny_dir):
    cfg = resolve([], [f"model={tiny_dir(family)}", "skip_loading_weights=true", "max_seq_len=128"])
    result = build(cfg, stop_after="export_to_gm")
    gm = result.model
    assert isinstance(gm, torch.fx.GraphModule)
    assert [n.name for n in gm.graph.nodes if n.op == "placeholder"] == ["input_ids", "position_ids"]
    assert all(p.device.type == "meta" for p in gm.parameters())  # captured without real weights

    reference = result.ctx.factory.materialize(torch.device("cpu"))
    assign_weights(gm, source_tensors(reference))
    retarget_device_kwargs(gm, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    for batch, seq in SHAPES:  # one graph serves every batch/sequence shape
        ids = torch.randint(0, 320, (batch, seq), generator=gen)
        pos = torch.arange(seq).expand(batch, seq)
        with torch.no_grad():
            want = reference(input_ids=ids, position_ids=pos, use_cache=False).logits
            got = gm(ids, pos)
        assert got.shape == want.shape == (batch, seq, 320)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family,patched", [("llama", True), ("gpt2", True), ("bloom", False), ("mpt", False),
                                            ("falcon", False), ("gpt_neo", False), ("xglm", False)])
def test_attention_patch_only_for_models_using_the_attention_interface(family, patched, tiny_dir):
    """Models with their own attention code would read the patch's no-op mask as "no mask" (non-causal)."""
    cfg = resolve([], [f"model={tiny_dir(family)}", "skip_loading_weights=true", "max_seq_len=128"])
    result = build(cfg, stop_after="export_to_gm")
    assert ("hf_attention_to_torch_attention" in result.ctx.facts.export_patches) is patched
    has_op = any("torch_attention" in str(n.target) for n in result.model.graph.nodes)
    assert has_op is patched


def test_constants_created_on_meta_get_their_values(tiny_dir):
    """Falcon's x[..., [-2], :] builds its index tensor on the capture device (meta); a second trace with fake CPU
    weights supplies the values, so the graph indexes the right rows."""
    cfg = resolve([], [f"model={tiny_dir('falcon')}", "skip_loading_weights=true", "max_seq_len=128"])
    gm = build(cfg, stop_after="export_to_gm").model
    values = []
    for target in [str(n.target) for n in gm.graph.nodes if "lifted_tensor" in str(n.target)]:
        owner, _, leaf = target.rpartition(".")
        values.append(getattr(gm.get_submodule(owner), leaf))
    assert values and all(v.device.type == "cpu" for v in values)
    assert sorted(v.tolist() for v in values) == [[-2], [-2], [-1], [-1]]  # key, value rows of 2 layers
