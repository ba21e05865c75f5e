"""match_repeat_kv: HF's repeat_kv unsqueeze -> expand -> reshape chain becomes torch_attention_repeat_kv."""

from __future__ import annotations

import torch
from torch import nn

from autodeploy_cli.ops import load_ops
from tests.transforms.pattern_helpers import (
    count, export_tiny, export_toy, matches, max_rel_err, nodes_of, ops_in, repeat_kv_chains, run_transforms,
)

load_ops()
REPEAT_KV = torch.ops.auto_deploy.torch_attention_repeat_kv.default


def test_llama_eager_repeat_kv_chains_become_ops():
    tiny = export_tiny("llama", "eager")
    assert repeat_kv_chains(tiny.gm) == 4  # k and v in 2 layers
    records, ctx = run_transforms(tiny.gm, ["match_repeat_kv"])
    assert matches(records) == {"match_repeat_kv": 4}
    assert count(tiny.gm, REPEAT_KV) == 4 and repeat_kv_chains(tiny.gm) == 0
    assert {n.args[1] for n in nodes_of(tiny.gm, REPEAT_KV)} == {2}  # 4 heads over 2 kv heads
    assert [tuple(n.meta["val"].shape[1:2]) for n in nodes_of(tiny.gm, REPEAT_KV)] == [(4,)] * 4
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5

    records, _ = run_transforms(tiny.gm, ["match_repeat_kv"])  # applied twice: nothing new
    assert matches(records) == {"match_repeat_kv": 0}


class _Expand(nn.Module):
    """An expand chain that is not repeat_kv (unsqueeze on dim 1, broadcast over a new leading group)."""

    def forward(self, x):  # x: [b, s, 8]
        return x.unsqueeze(1).expand(-1, 3, -1, -1).reshape(x.shape[0], -1, 8)


def test_graph_without_the_pattern_is_unchanged():
    gm = export_toy(_Expand(), torch.randn(2, 5, 8), dynamic={0: {0: "b", 1: "s"}})
    before = ops_in(gm)
    records, _ = run_transforms(gm, ["match_repeat_kv"])
    assert matches(records) == {"match_repeat_kv": 0}
    assert ops_in(gm) == before


def test_reference_op_repeats_heads_like_hf():
    from transformers.models.llama.modeling_llama import repeat_kv

    x = torch.randn(2, 3, 5, 4)
    assert torch.equal(REPEAT_KV(x, 4), repeat_kv(x, 4))
