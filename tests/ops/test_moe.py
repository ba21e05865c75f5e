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
