"""match_rope_layout: RoPE ops on bnsd q/k get transposed inputs/outputs and unsqueeze_dim 2 (bsnd)."""

from __future__ import annotations

import torch

from autodeploy_cli.ops import load_ops
from tests.transforms.pattern_helpers import count, export_tiny, matches, max_rel_err, nodes_of, ops_in, run_transforms

load_ops()
ROPE = torch.ops.auto_deploy.torch_rope_with_explicit_cos_sin.default
aten = torch.ops.aten


def test_rope_moves_to_bsnd():
    tiny = export_tiny("qwen3", "eager")
    run_transforms(tiny.gm, ["match_rope_pattern"])
    assert [n.args[4] for n in nodes_of(tiny.gm, ROPE)] == [1, 1]
    transposes = count(tiny.gm, aten.transpose.int)
    records, ctx = run_transforms(tiny.gm, ["match_rope_layout"])
    assert matches(records) == {"match_rope_layout": 2}
    ropes = nodes_of(tiny.gm, ROPE)
    assert [n.args[4] for n in ropes] == [2, 2]
    assert [tuple(n.args[0].meta["val"].shape[2:]) for n in ropes] == [(4, 16), (4, 16)]  # q in [b, s, n, d]
    assert count(tiny.gm, aten.transpose.int) == transposes + 2 * 4
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5

    records, _ = run_transforms(tiny.gm, ["match_rope_layout"])
    assert matches(records) == {"match_rope_layout": 0}


def test_graph_without_rope_is_unchanged():
    tiny = export_tiny("llama", "eager")  # RoPE still as aten ops: nothing to re-layout
    before = ops_in(tiny.gm)
    records, _ = run_transforms(tiny.gm, ["match_rope_layout"])
    assert matches(records) == {"match_rope_layout": 0} and ops_in(tiny.gm) == before
