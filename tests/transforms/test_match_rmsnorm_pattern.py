"""match_rmsnorm_pattern: HF RMSNorm (Llama and Gemma (1 + w) forms) becomes torch_rmsnorm; a broken norm is
left alone with the reason recorded for the build report."""

from __future__ import annotations

import torch
from torch import nn

from autodeploy_cli.ops import load_ops
from tests.transforms.pattern_helpers import (
    count, export_tiny, export_toy, matches, max_rel_err, nodes_of, ops_in, run_transforms,
)

load_ops()
RMSNORM = torch.ops.auto_deploy.torch_rmsnorm.default
aten = torch.ops.aten


def test_llama_rmsnorm():
    tiny = export_tiny("llama", "eager")
    records, ctx = run_transforms(tiny.gm, ["match_rmsnorm_pattern"])
    assert matches(records) == {"match_rmsnorm_pattern": 5}  # 2 per layer + final
    norms = nodes_of(tiny.gm, RMSNORM)
    assert [n.args[1].target for n in norms][-1] == "model.norm.weight"
    assert {(n.args[2], n.args[3]) for n in norms} == {(1e-6, 0.0)}
    assert count(tiny.gm, aten.rsqrt.default) == 0 and count(tiny.gm, aten.pow.Tensor_Scalar) == 0
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5

    records, _ = run_transforms(tiny.gm, ["match_rmsnorm_pattern"])
    assert matches(records) == {"match_rmsnorm_pattern": 0}


def test_gemma3_one_plus_weight_and_qk_norms():
    tiny = export_tiny("gemma3", "eager")
    records, ctx = run_transforms(tiny.gm, ["match_rmsnorm_pattern"])
    assert matches(records) == {"match_rmsnorm_pattern": 13}  # 4 + q/k norms per layer + final
    norms = nodes_of(tiny.gm, RMSNORM)
    assert {n.args[3] for n in norms} == {1.0}
    assert sum(n.args[1].target.endswith("q_norm.weight") for n in norms) == 2
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5


class _Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.rand(8) + 0.5)
        self.w2 = nn.Parameter(torch.rand(8) + 0.5)

    def forward(self, x):
        good = x.float()
        good = self.w1 * (good * torch.rsqrt(good.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype)
        bad = good.float()  # no eps: rsqrt(mean(x^2)) is not RMSNorm as HF writes it
        return self.w2 * (bad * torch.rsqrt(bad.pow(2).mean(-1, keepdim=True))).to(x.dtype)


def test_broken_norm_is_not_matched_and_the_reason_is_recorded():
    module = _Norms()
    gm = export_toy(module, torch.randn(2, 5, 8), dynamic={0: {0: "b", 1: "s"}})
    records, ctx = run_transforms(gm, ["match_rmsnorm_pattern"])
    assert matches(records) == {"match_rmsnorm_pattern": 1}
    assert count(gm, aten.rsqrt.default) == 1
    (miss,) = ctx.misses["rmsnorm"]
    assert miss["reason"] == "rsqrt input is `mean.dim`, not mean(x^2) + eps (no eps add)"
    assert miss["chain"].endswith("pow.Tensor_Scalar -> mean.dim -> rsqrt")
    x = torch.randn(3, 4, 8)
    torch.testing.assert_close(gm(x), module(x))


class _NoNorm(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x.mean(-1, keepdim=True))


def test_graph_without_the_pattern_is_unchanged():
    gm = export_toy(_NoNorm(), torch.randn(2, 8), dynamic={0: {0: "b"}})
    before = ops_in(gm)
    records, _ = run_transforms(gm, ["match_rmsnorm_pattern"])
    assert matches(records) == {"match_rmsnorm_pattern": 0}
    assert ops_in(gm) == before
