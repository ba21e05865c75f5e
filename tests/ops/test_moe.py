"""torch_moe: equals transformers' Mixtral experts (stacked weights) given the same routing."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.ops import load_ops
from tests.tiny_models import tiny_hf_config

load_ops()
MOE = torch.ops.auto_deploy.torch_moe


def _experts(impl: str):
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts

    cfg = tiny_hf_config("mixtral")
    cfg._experts_implementation = impl
    torch.manual_seed(0)
    experts = MixtralExperts(cfg)
    torch.nn.init.normal_(experts.gate_up_proj, std=0.1)
    torch.nn.init.normal_(experts.down_proj, std=0.1)
    return experts, cfg.intermediate_size


def _lists(experts, inter):
    gu, down = experts.gate_up_proj, experts.down_proj
    n = len(gu)
    return [gu[e, :inter] for e in range(n)], [down[e] for e in range(n)], [gu[e, inter:] for e in range(n)]


@pytest.mark.parametrize("impl", ["batched_mm", "grouped_mm"])
def test_equals_hf_experts(impl):
    experts, inter = _experts(impl)
    x = torch.randn(7, 64)
    logits = torch.randn(7, 4)
    weights, ids = torch.topk(torch.softmax(logits, -1), 2)
    weights = weights / weights.sum(-1, keepdim=True)
    with torch.no_grad():
        want = experts(x, ids, weights)
        got = MOE(x, ids, weights, *_lists(experts, inter))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_out_of_range_ids_are_ignored_and_leading_dims_kept():
    experts, inter = _experts("batched_mm")
    x = torch.randn(2, 3, 64)
    ids = torch.tensor([[0, 9]] * 6)  # 9 is not an expert
    weights = torch.full((6, 2), 0.5)
    with torch.no_grad():
        got = MOE(x, ids, weights, *_lists(experts, inter))
        only_0 = MOE(x, ids[:, :1], weights[:, :1], *_lists(experts, inter))
    assert got.shape == x.shape
    torch.testing.assert_close(got, only_0)


def test_opcheck():
    experts, inter = _experts("batched_mm")
    w1, w2, w3 = (list(t.detach() for t in ws) for ws in _lists(experts, inter))
    args = (torch.randn(5, 64), torch.randint(0, 4, (5, 2)), torch.rand(5, 2), w1, w2, w3)
    torch.library.opcheck(MOE.default, args, test_utils=("test_schema", "test_faketensor"))


def _naive(x, ids, weights, w1, w2, w3, b1, b2, b3, act, on_input):
    """Token by token, slot by slot: an independent statement of the torch_moe contract."""
    from autodeploy_cli.ops.moe import activation

    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            if not 0 <= e < len(w1):
                continue
            h = x[t] * weights[t, j] if on_input else x[t]
            g = w1[e] @ h + (b1[e] if b1 else 0)
            u = w3[e] @ h + (b3[e] if b3 else 0) if w3 else None
            y = w2[e] @ activation(act, g, u) + (b2[e] if b2 else 0)
            out[t] += y if on_input else weights[t, j] * y
    return out


@pytest.mark.parametrize("act,gated,bias,on_input", [
    ("swiglu_oai", True, True, False), ("gelu", False, True, False), ("gelu_tanh", True, False, False),
    ("relu2", False, False, False), ("silu", True, False, True), ("relu", True, True, True),
])
def test_activations_biases_gating_and_routing_on_input(act, gated, bias, on_input):
    g = torch.Generator().manual_seed(3)
    n, h, i = 5, 16, 12
    mk = lambda *s: torch.randn(*s, generator=g) * 0.3  # noqa: E731
    w1, w2 = [mk(i, h) for _ in range(n)], [mk(h, i) for _ in range(n)]
    w3 = [mk(i, h) for _ in range(n)] if gated else []
    b1, b2 = ([mk(i) for _ in range(n)], [mk(h) for _ in range(n)]) if bias else (None, None)
    b3 = [mk(i) for _ in range(n)] if bias and gated else None
    x = mk(7, h)
    weights, ids = torch.topk(torch.softmax(mk(7, n), -1), 2)
    ids[1, 0] = n + 2  # ignored
    got = MOE(x, ids, weights, w1, w2, w3, w1_bias=b1, w2_bias=b2, w3_bias=b3, act=act, routing_on_input=on_input)
    want = _naive(x, ids, weights, w1, w2, w3, b1, b2, b3, act, on_input)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_named():
    x, ids, w = torch.randn(2, 8), torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1)
    lists = ([torch.randn(4, 8)], [torch.randn(8, 4)])
    with pytest.raises(ValueError, match="unknown MoE activation 'swish'"):
        MOE(x, ids, w, lists[0], lists[1], [], act="swish")
    with pytest.raises(ValueError, match="swiglu_oai experts are gated"):
        MOE(x, ids, w, lists[0], lists[1], [], act="swiglu_oai")


def test_opcheck_with_biases():
    g = torch.Generator().manual_seed(0)
    lists = [[torch.randn(6, 8, generator=g) for _ in range(3)], [torch.randn(8, 6, generator=g) for _ in range(3)],
             [torch.randn(6, 8, generator=g) for _ in range(3)]]
    biases = [[torch.randn(6, generator=g) for _ in range(3)], [torch.randn(8, generator=g) for _ in range(3)],
              [torch.randn(6, generator=g) for _ in range(3)]]
    args = (torch.randn(4, 8), torch.randint(0, 3, (4, 2)), torch.rand(4, 2), *lists, *biases, "swiglu_oai")
    torch.library.opcheck(MOE.default, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("gated,bias,on_input", [(True, False, False), (False, True, False), (True, True, True)])
def test_stacked_form_equals_lists(gated, bias, on_input):
    g = torch.Generator().manual_seed(5)
    n, h, i = 4, 16, 8
    w1, w2 = torch.randn(n, i, h, generator=g), torch.randn(n, h, i, generator=g)
    w3 = torch.randn(n, i, h, generator=g) if gated else None
    b1, b2 = (torch.randn(n, i, generator=g), torch.randn(n, h, generator=g)) if bias else (None, None)
    b3 = torch.randn(n, i, generator=g) if bias and gated else None
    x = torch.randn(6, h, generator=g)
    weights, ids = torch.topk(torch.softmax(torch.randn(6, n, generator=g), -1), 2)
    per = lambda t: None if t is None else list(t.unbind(0))  # noqa: E731
    want = MOE(x, ids, weights, per(w1), per(w2), per(w3) or [], w1_bias=per(b1), w2_bias=per(b2), w3_bias=per(b3),
               act="gelu", routing_on_input=on_input)
    got = torch.ops.auto_deploy.torch_moe_stacked(x, ids, weights, w1, w2, w3, b1, b2, b3, act="gelu",
                                                  routing_on_input=on_input)
    torch.testing.assert_close(got, want)
    args = (x, ids, weights, w1, w2, w3, b1, b2, b3, "gelu", on_input)
    torch.library.opcheck(torch.ops.auto_deploy.torch_moe_stacked.default, args,
                          test_utils=("test_schema", "test_faketensor"))
