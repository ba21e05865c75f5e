"""torch_moe_fused (the fused family's torch backend): equals torch_moe on the same experts, on both of its paths
(gathered pairs for decode, dense experts otherwise); ignores ids outside [0, E), so expert parallelism is slicing
the weights and shifting the ids; runs with no host sync (it captures in a CUDA graph: tests/kernels/triton)."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.ops import load_ops

load_ops()
AD = torch.ops.auto_deploy


def experts(n: int, h: int, i: int, gated: bool, bias: bool, seed: int = 0, dtype=torch.float32):
    """(w13 [n, 2i or i, h], w2 [n, h, i], b13, b2) and the same as torch_moe's per-expert lists."""
    g = torch.Generator().manual_seed(seed)
    w13 = torch.randn(n, (2 if gated else 1) * i, h, generator=g) / h ** 0.5
    w2 = torch.randn(n, h, i, generator=g) / i ** 0.5
    b13 = torch.randn(n, w13.shape[1], generator=g) * 0.1 if bias else None
    b2 = torch.randn(n, h, generator=g) * 0.1 if bias else None
    fused = tuple(t if t is None else t.to(dtype) for t in (w13, w2, b13, b2))
    w13, w2, b13, b2 = fused
    lists = ([w13[e, :i] for e in range(n)], [w2[e] for e in range(n)], [w13[e, i:] for e in range(n)] if gated else [])
    blists = (None, None, None) if not bias else (
        [b13[e, :i] for e in range(n)], [b2[e] for e in range(n)], [b13[e, i:] for e in range(n)] if gated else None)
    return fused, lists, blists


def routing(t: int, n: int, k: int, seed: int = 1, drop: bool = True):
    g = torch.Generator().manual_seed(seed)
    weights, ids = torch.topk(torch.softmax(torch.randn(t, n, generator=g), -1), k)
    if drop and t > 1:
        ids[0, -1] = -1  # ignored ids: below and above the range
        ids[t - 1, 0] = n
    return ids, weights


CASES = [("silu", True, False, False), ("swiglu_oai", True, True, False), ("gelu", False, True, False),
         ("relu2", False, False, False), ("silu", True, False, True)]


@pytest.mark.parametrize("tokens", [1, 2, 11])  # 2 and 4 pairs <= 8 experts: gathered; 22 pairs: dense
@pytest.mark.parametrize("act,gated,bias,on_input", CASES)
def test_equals_torch_moe(tokens, act, gated, bias, on_input):
    (w13, w2, b13, b2), lists, blists = experts(8, 16, 12, gated, bias)
    x = torch.randn(tokens, 16)
    ids, weights = routing(tokens, 8, 2)
    want = AD.torch_moe(x, ids, weights, *lists, *blists, act=act, routing_on_input=on_input)
    got = AD.torch_moe_fused(x, ids, weights, w13, w2, b13, b2, act=act, gated=gated, routing_on_input=on_input)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tokens", [1, 9])
def test_expert_parallel_is_slicing_and_shifting_ids(tokens):
    """Two ranks with experts [0, 3) and [3, 8): the sum of their partial outputs is the full op's."""
    (w13, w2, b13, b2), _, _ = experts(8, 16, 12, True, True)
    x = torch.randn(tokens, 16)
    ids, weights = routing(tokens, 8, 3, drop=False)
    full = AD.torch_moe_fused(x, ids, weights, w13, w2, b13, b2)
    parts = [AD.torch_moe_fused(x, ids - lo, weights, w13[lo:hi], w2[lo:hi], b13[lo:hi], b2[lo:hi])
             for lo, hi in ((0, 3), (3, 8))]
    torch.testing.assert_close(parts[0] + parts[1], full, rtol=1e-5, atol=1e-5)


def test_leading_dims_and_dtype_kept():
    (w13, w2, _, _), _, _ = experts(4, 8, 6, True, False, dtype=torch.bfloat16)
    x = torch.randn(2, 3, 8, dtype=torch.bfloat16)
    ids, weights = routing(6, 4, 2)
    out = AD.torch_moe_fused(x, ids, weights, w13, w2)
    assert out.shape == x.shape and out.dtype == torch.bfloat16


def test_opcheck():
    (w13, w2, b13, b2), _, _ = experts(4, 8, 6, True, True)
    ids, weights = routing(5, 4, 2)
    args = (torch.randn(5, 8), ids, weights, w13, w2, b13, b2, "silu", True, False, 1.702, 7.0)
    torch.library.opcheck(AD.torch_moe_fused.default, args, test_utils=("test_schema", "test_faketensor"))
