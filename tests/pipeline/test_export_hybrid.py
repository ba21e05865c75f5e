"""Capture of hybrid HF models: the mixer export patches give one canonical op per mixer and a graph equal to HF
eager on every shape; without them torch.export pins the sequence length (why the patches exist)."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.graph.core import count_ops, retarget_device_kwargs
from autodeploy_cli.models.weights import assign_weights, source_tensors
from autodeploy_cli.pipeline.build import build

ops = torch.ops.auto_deploy
# family -> (torch_ssm, torch_causal_conv1d, torch_gated_delta_rule) nodes after export
COUNTS = {"nemotron_h": (1, 1, 0), "bamba": (1, 1, 0), "granitemoehybrid": (1, 1, 0), "mamba2": (2, 2, 0),
          "qwen3_next": (0, 1, 1)}


@pytest.mark.parametrize("family", sorted(COUNTS))
def test_patched_export_equals_eager(family, tiny_dir):
    cfg = resolve([], [f"model={tiny_dir(family)}", "skip_loading_weights=true"])
    result = build(cfg, stop_after="export_to_gm")
    gm = result.model
    assert "hf_mamba2_to_torch_ssm" in result.ctx.facts.export_patches
    got_counts = tuple(count_ops(gm, op) for op in (ops.torch_ssm, ops.torch_causal_conv1d,
                                                     ops.torch_gated_delta_rule))
    assert got_counts == COUNTS[family]
    reference = result.ctx.factory.materialize(torch.device("cpu"))
    assign_weights(gm, source_tensors(reference))
    retarget_device_kwargs(gm, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    for batch, seq in ((2, 11), (1, 1), (3, 20)):  # 20 tokens: three SSD chunks of 8
        ids = torch.randint(0, 320, (batch, seq), generator=gen)
        pos = torch.arange(seq).expand(batch, seq)
        with torch.no_grad():
            want = reference(input_ids=ids, position_ids=pos, use_cache=False).logits
            out = gm(ids, pos)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_without_the_patch_export_pins_the_sequence_length(tiny_dir):
    from autodeploy_cli.errors import ADError

    cfg = resolve([], [f"model={tiny_dir('mamba2')}", "skip_loading_weights=true",
                       "transforms.export_to_gm.patches.hf_mamba2_to_torch_ssm=false"])
    with pytest.raises(ADError, match=r"`export_to_gm` \(stage export\) failed: .*Specializations unexpectedly required \(seq\)"):
        build(cfg, stop_after="export_to_gm")
