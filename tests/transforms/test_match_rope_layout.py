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


def test_complex_rope_whose_default_unsqueeze_dim_export_dropped():
    """torch.export omits arguments equal to their default: torch_rope_with_complex_freqs(q, k, freqs) is already
    bsnd (unsqueeze_dim defaults to 2) and keeps its freqs; the bnsd form (unsqueeze_dim 1) moves to bsnd."""
    from tests.transforms.pattern_helpers import export_toy

    complex_rope = torch.ops.auto_deploy.torch_rope_with_complex_freqs

    class Toy(torch.nn.Module):
        def forward(self, q, k, freqs):
            a, b = complex_rope(q, k, freqs)  # [b, s, n, d]
            c, d = complex_rope(q.transpose(1, 2), k.transpose(1, 2), freqs, 1)  # [b, n, s, d]
            return a + c.transpose(1, 2), b + d.transpose(1, 2)

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 5, 4, 8, generator=g), torch.randn(2, 5, 1, 8, generator=g)
    freqs = torch.polar(torch.ones(1, 5, 4), torch.randn(1, 5, 4, generator=g))
    gm = export_toy(Toy(), q, k, freqs)
    assert sorted(len(n.args) for n in nodes_of(gm, complex_rope.default)) == [3, 4]
    want = Toy()(q, k, freqs)
    records, _ = run_transforms(gm, ["match_rope_layout"])
    assert matches(records) == {"match_rope_layout": 1}
    for n in nodes_of(gm, complex_rope.default):  # freqs kept; bsnd either by default or explicitly
        assert n.args[2].op == "placeholder" and n.args[3:] in ((), (2,))
    for got, ref in zip(gm(q, k, freqs), want):
        torch.testing.assert_close(got, ref)
