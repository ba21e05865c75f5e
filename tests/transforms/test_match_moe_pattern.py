"""match_moe_pattern: transformers' experts block (batched_mm and grouped_mm implementations) becomes torch_moe
with per-expert weights loaded as views of the stacked checkpoint tensors; the router and shared experts stay."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autodeploy_cli.ops import load_ops
from autodeploy_cli.graph.core import op_name
from autodeploy_cli.graph.inputs import bound_args
from tests.transforms.pattern_helpers import (
    export_tiny, export_toy, matches, max_rel_err, nodes_of, ops_in, run_transforms, with_weights,
)

load_ops()
MOE = torch.ops.auto_deploy.torch_moe.default
STACKED = torch.ops.auto_deploy.torch_moe_stacked.default
aten = torch.ops.aten


@pytest.mark.parametrize("family,experts,gone,inter", [
    ("mixtral", "batched_mm", "aten.bmm", 96),
    ("qwen3_moe", "grouped_mm", "transformers.grouped_mm_fallback", 32),  # float32 export uses transformers' op
])
def test_experts_become_torch_moe(family, experts, gone, inter):
    tiny = export_tiny(family, "eager", patch=True, experts=experts)
    assert gone in ops_in(tiny.gm)
    records, ctx = run_transforms(tiny.gm, ["match_moe_pattern"])
    assert matches(records) == {"match_moe_pattern": 2}
    assert ctx.facts.moe_experts_implementation == experts
    assert gone not in ops_in(tiny.gm) and "aten.histc" not in ops_in(tiny.gm)
    moe = nodes_of(tiny.gm, MOE)
    assert [len(n.args[3]) for n in moe] == [4, 4]  # 4 experts
    assert moe[0].args[3][1].target == "model.layers.0.mlp.experts.1.gate_proj.weight"
    gate, down, up = (tiny.gm.get_parameter(f"model.layers.0.mlp.experts.0.{k}_proj.weight")
                      for k in ("gate", "down", "up"))
    assert (gate.shape, down.shape, up.shape) == ((inter, 64), (64, inter), (inter, 64))
    assert "aten.topk" in ops_in(tiny.gm)  # the router stays outside
    stacked = {n for n, _ in tiny.gm.named_parameters() if n.endswith(("gate_up_proj", "experts.down_proj"))}
    assert stacked == set()  # the stacked weights are no longer graph parameters ...
    runnable = with_weights(tiny.gm, tiny.ref, ctx)  # ... the hooks fill per-expert views of them
    w = runnable.get_parameter("model.layers.1.mlp.experts.2.up_proj.weight")
    src = tiny.ref.model.layers[1].mlp.experts.gate_up_proj
    assert w.data_ptr() == src[2, w.shape[0]:].data_ptr()  # a view: no copy
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5

    records, _ = run_transforms(tiny.gm, ["match_moe_pattern"], ctx=ctx)
    assert matches(records) == {"match_moe_pattern": 0}


def test_qwen2_moe_shared_expert_stays_outside():
    tiny = export_tiny("qwen2_moe", "eager", patch=True, experts="batched_mm")
    records, ctx = run_transforms(tiny.gm, ["match_moe_pattern"])
    assert matches(records) == {"match_moe_pattern": 2}
    linears = {n.args[1].target for n in tiny.gm.graph.nodes if op_name(n) == "aten.linear"}
    assert "model.layers.0.mlp.shared_expert.up_proj.weight" in linears
    assert "model.layers.0.mlp.shared_expert_gate.weight" in linears
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5


class _DenseMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8)

    def forward(self, x):
        return self.down(torch.relu(self.up(x))).sum(1)  # a sum over dim 1 that is not an expert reduction


def test_graph_without_the_pattern_is_unchanged():
    gm = export_toy(_DenseMLP(), torch.randn(2, 5, 8), dynamic={0: {0: "b", 1: "s"}})
    before = ops_in(gm)
    records, ctx = run_transforms(gm, ["match_moe_pattern"])
    assert matches(records) == {"match_moe_pattern": 0}
    assert ops_in(gm) == before and ctx.facts.moe_experts_implementation is None


def test_export_patch_form_stays_stacked_and_is_reported():
    tiny = export_tiny("gpt_oss", "eager", patch=True, moe_patch=True)
    assert len(nodes_of(tiny.gm, STACKED)) == 2 and not nodes_of(tiny.gm, MOE)  # one stacked op per layer
    before = ops_in(tiny.gm)
    records, ctx = run_transforms(tiny.gm, ["match_moe_pattern"])
    assert matches(records) == {"match_moe_pattern": 0} and ops_in(tiny.gm) == before  # already canonical
    assert ctx.facts.moe_experts_implementation == "export patch"
    assert "moe" not in ctx.misses  # the routers (top-k) are recognised as feeding the experts op
    args = bound_args(nodes_of(tiny.gm, STACKED)[0])
    assert args["act"] == "swiglu_oai" and args["w1_bias"] is not None
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5


@pytest.mark.parametrize("family,overrides,act,biased", [
    ("gpt_oss", {}, "swiglu_oai", True),  # transposed [E, h, 2I], gate/up interleaved, biases
    ("qwen3_moe", {"hidden_size": 60, "moe_intermediate_size": 30}, "silu", False),  # dims not multiple of 8
])
def test_lifted_stacked_views_become_per_expert_parameters(family, overrides, act, biased):
    tiny = export_tiny(family, "eager", patch=True, moe_patch=True, **overrides)
    opts = {"match_moe_pattern": {"lift_stacked_experts": True}}
    records, ctx = run_transforms(tiny.gm, ["match_moe_pattern"], options=opts)
    assert matches(records) == {"match_moe_pattern": 2}
    assert ctx.facts.moe_experts_implementation == "export patch"
    assert not nodes_of(tiny.gm, STACKED)
    moe = nodes_of(tiny.gm, MOE)
    assert all(a.op == "get_attr" for a in moe[0].args[3]) and bound_args(moe[0])["act"] == act
    assert moe[1].args[3][2].target == "model.layers.1.mlp.experts.2.gate_proj.weight"
    stacked = {n for n, _ in tiny.gm.named_parameters() if n.endswith(("gate_up_proj", "experts.down_proj"))}
    assert stacked == set()
    inter = overrides.get("moe_intermediate_size", 96 if family == "gpt_oss" else 32)
    runnable = with_weights(tiny.gm, tiny.ref, ctx)
    up = runnable.get_parameter("model.layers.0.mlp.experts.3.up_proj.weight")
    src = tiny.ref.model.layers[0].mlp.experts.gate_up_proj
    assert up.shape == (inter, overrides.get("hidden_size", 64))
    assert up.untyped_storage().data_ptr() == src.untyped_storage().data_ptr()  # a view: no copy
    if biased:
        bias = runnable.get_parameter("model.layers.0.mlp.experts.3.up_proj.bias")
        assert torch.equal(bias, tiny.ref.model.layers[0].mlp.experts.gate_up_proj_bias[3, 1::2])
        with torch.no_grad():  # HF initialises expert biases to zero; make them count
            for name, p in tiny.ref.named_parameters():
                if "experts" in name and "bias" in name:
                    p.normal_(0, 0.5)
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5
    records, _ = run_transforms(tiny.gm, ["match_moe_pattern"], ctx=ctx, options=opts)
    assert matches(records) == {"match_moe_pattern": 0}
    assert "moe" not in ctx.misses
