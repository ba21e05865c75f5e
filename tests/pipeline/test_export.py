"""Capture: the exported graph (meta weights, dynamic batch/seq) equals HF eager once weights are loaded."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.pipeline.build import build
from autodeploy_cli.graph.core import retarget_device_kwargs
from autodeploy_cli.models.weights import assign_weights, source_tensors

FAMILIES = ["llama", "qwen3", "phi3", "gemma", "mixtral"]
SHAPES = [(2, 7), (3, 1), (1, 5)]


@pytest.mark.parametrize("family", FAMILIES)
def test_export_equals_eager(family, tiny_dir):
    cfg = resolve([], [f"model={tiny_dir(family)}", "skip_loading_weights=true"])
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
