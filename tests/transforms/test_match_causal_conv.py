"""match_causal_conv: an unpatched depthwise causal conv (HF's causal_conv1d_fn reference, nn.Conv1d + trim)
becomes torch_causal_conv1d; a non-causal or non-depthwise conv is left alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autodeploy_cli.ops import load_ops
from tests.transforms.pattern_helpers import count, export_toy, matches, run_transforms

load_ops()
CONV = torch.ops.auto_deploy.torch_causal_conv1d.default
aten = torch.ops.aten


class _Convs(nn.Module):
    """HF's reference causal conv (silu, transposed back) and an nn.Conv1d trimmed to s, its output kept [b, C, s]."""

    def __init__(self):
        super().__init__()
        self.conv1d = nn.Conv1d(6, 6, 4, groups=6, padding=3)

    def forward(self, x):
        s = x.shape[1]
        w = self.conv1d.weight.squeeze(1).unsqueeze(1)
        y = F.silu(F.conv1d(x.transpose(1, 2).to(w.dtype), w, self.conv1d.bias, padding=3, groups=6)[:, :, :s])
        z = self.conv1d(x.transpose(1, 2))[..., :s]
        return y.transpose(1, 2) + 1, z


class _NotCausal(nn.Module):
    def __init__(self):
        super().__init__()
        self.same = nn.Conv1d(6, 6, 3, groups=6, padding=1)  # centred window: sees the future
        self.dense = nn.Conv1d(6, 6, 4, padding=3)  # not depthwise

    def forward(self, x):
        s = x.shape[1]
        return self.same(x.transpose(1, 2)) + self.dense(x.transpose(1, 2))[..., :s]


def test_causal_convs_become_the_canonical_op():
    module = _Convs()
    gm = export_toy(module, torch.randn(2, 5, 6), dynamic={0: {0: "b", 1: "s"}})
    records, _ = run_transforms(gm, ["match_causal_conv"])
    assert matches(records) == {"match_causal_conv": 2}
    assert count(gm, CONV) == 2 and count(gm, aten.conv1d.default) == 0 and count(gm, aten.silu.default) == 0
    acts = sorted(str(n.args[3]) for n in gm.graph.nodes if n.target == CONV)
    assert acts == ["None", "silu"]
    x = torch.randn(3, 9, 6)  # a second shape
    for got, want in zip(gm(x), module(x)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    records, _ = run_transforms(gm, ["match_causal_conv"])
    assert matches(records) == {"match_causal_conv": 0}


def test_non_causal_convs_are_left_alone_with_a_reason():
    gm = export_toy(_NotCausal(), torch.randn(2, 5, 6), dynamic={0: {0: "b", 1: "s"}})
    before = str(gm.graph)
    records, ctx = run_transforms(gm, ["match_causal_conv"])
    assert matches(records) == {"match_causal_conv": 0} and str(gm.graph) == before
    reasons = sorted(m["reason"] for m in ctx.misses["causal_conv"])
    assert reasons == ["not a depthwise stride-1 conv padded by K - 1"] * 2


class _ChannelsFirst(nn.Module):
    """LFM2's gated short conv: the conv reads a [b, C, s] tensor made by a transpose of a linear projection's chunk
    multiplied by a gate, so no transpose sits directly before the conv."""

    def __init__(self):
        super().__init__()
        self.in_proj = nn.Linear(6, 12, bias=False)
        self.conv = nn.Conv1d(6, 6, 3, groups=6, padding=2, bias=False)

    def forward(self, x):
        s = x.shape[1]
        b, c = self.in_proj(x).transpose(-1, -2).chunk(2, dim=-2)
        return self.conv(b * c)[..., :s].transpose(-1, -2)


def test_channels_first_conv_input_is_transposed_into_the_canonical_op():
    module = _ChannelsFirst()
    gm = export_toy(module, torch.randn(2, 5, 6), dynamic={0: {0: "b", 1: "s"}})
    records, _ = run_transforms(gm, ["match_causal_conv"])
    assert matches(records) == {"match_causal_conv": 1}
    assert count(gm, CONV) == 1 and count(gm, aten.conv1d.default) == 0
    x = torch.randn(3, 9, 6)
    torch.testing.assert_close(gm(x), module(x), rtol=1e-6, atol=1e-6)
