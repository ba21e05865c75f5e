"""The quantization quality gate's numbers: cosine similarity and top-1 agreement (near-ties counted) vs a reference."""

from __future__ import annotations

import torch

from autodeploy_cli.pipeline.quality_gate import THRESHOLDS, compare, describe, probe_batch


def test_identical_logits_pass_and_scaled_noise_is_measured():
    ref = torch.randn(2, 7, 50, generator=torch.Generator().manual_seed(0)) * 4
    same = compare(ref, ref)
    assert same["cosine"] > 0.9999 and same["top1"] == same["top1_ties"] == 1.0 and same["ok"]
    assert same["positions"] == 14 and same["thresholds"] == THRESHOLDS
    noisy = compare(ref + 2.0 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)), ref)
    assert noisy["cosine"] < 0.99 and not noisy["ok"]
    assert "FAILED" in describe(noisy) and "14 positions" in describe(noisy)


def test_near_ties_are_not_disagreements():
    g = torch.Generator().manual_seed(2)
    ref = torch.randn(4, 1000, generator=g)
    ref[:, 3], ref[:, 7] = 6.0, 5.999  # the two best tokens are a hair apart
    out = ref + 0.01 * torch.randn(ref.shape, generator=g)  # logit error ~0.01 everywhere
    out[:, 3], out[:, 7] = 5.998, 6.001  # and rounding reordered the two: a tie, not a wrong answer
    row = compare(out, ref)
    assert row["top1"] == 0.0 and row["top1_ties"] == 1.0 and row["ok"]
    out[:, 7] = 0.0
    out[:, 2] = 6.5  # a token the reference scores far below its best: a real disagreement
    assert compare(out, ref)["top1_ties"] == 0.0


def test_shape_mismatch_fails_with_a_note():
    row = compare(torch.zeros(2, 5), torch.zeros(2, 6))
    assert not row["ok"] and "differ" in row["note"]


def test_probe_batch_is_fixed_by_the_seed():
    a, pa = probe_batch(100, 7, "cpu")
    b, _ = probe_batch(100, 7, "cpu")
    assert torch.equal(a, b) and a.shape == pa.shape == (2, 7) and pa[1].tolist() == list(range(7))
