"""detect_sharding: the plan for each rank, decided on the meta graph (the graph itself does not change).

Numbers come from the threaded rank simulation (tests/transforms/sharding_helpers.py): every rank's graph built by
the real transforms, the collectives done between threads; the real processes are in tests/distributed/.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.errors import ADError
from autodeploy_cli.graph.core import op_name
from autodeploy_cli.pipeline.interface import PassContext
from tests.transforms.pattern_helpers import export_toy, ops_in, run_transforms
from tests.transforms.sharding_helpers import load_reference, rank_graphs, run_ranks
from transforms._sharding.planner import plan_regex

BASE = ["skip_loading_weights=true", "dtype=float32", "max_seq_len=64", "max_batch_size=4", "device=cpu"]


class Toy(nn.Module):
    """An attention block whose views spell head counts out (4 query, 2 KV heads of 8), then an MLP; every linear
    has a bias. `odd`: an op the prover does not know sits inside the MLP."""

    def __init__(self, odd: bool = False):
        super().__init__()
        self.q, self.k, self.v, self.o = nn.Linear(32, 32), nn.Linear(32, 16), nn.Linear(32, 16), nn.Linear(32, 32)
        self.up, self.down = nn.Linear(32, 48), nn.Linear(48, 32)
        self.odd = odd

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = self.q(x).view(b, s, 4, 8), self.k(x).view(b, s, 2, 8), self.v(x).view(b, s, 2, 8)
        a = torch.ops.auto_deploy.torch_attention(q, k, v, None, 0.0, True, None, None, None, None, "bsnd")
        x = x + self.o(a.reshape(b, s, 32))
        h = torch.relu(self.up(x))
        if self.odd:
            h = torch.cumsum(h, -1)
        return x + self.down(h)


def _toy_ranks(odd: bool, world_size: int = 2, through: str = "sharding_transform_executor"):
    from autodeploy_cli.ops import load_ops

    load_ops()
    torch.manual_seed(0)
    toy = Toy(odd).eval()
    # as in the pipeline: captured on the meta device (weights load after sharding)
    gm = export_toy(copy.deepcopy(toy).to("meta"), torch.randn(2, 5, 32, device="meta"), dynamic={0: {0: "b", 1: "s"}})
    graphs, ctxs = [], []
    for rank in range(world_size):
        ctx = PassContext(config=None, factory=None, device=torch.device("cpu"), rank=rank, world_size=world_size)
        g = copy.deepcopy(gm)
        names = ["detect_sharding"] + (["sharding_transform_executor"] if through != "detect_sharding" else [])
        records, ctx = run_transforms(g, names, ctx, {n: {"stage": "sharding"} for n in names})
        ctx.records = records
        graphs.append(g)
        ctxs.append(ctx)
    return toy, gm, graphs, ctxs


def _styles(ctx) -> dict[str, str]:
    return {d["weight"]: d["style"] for d in ctx.facts.sharding["decisions"]}


def test_toy_block_is_column_row_with_head_counts_rescaled():
    toy, gm, graphs, ctxs = _toy_ranks(odd=False, through="detect_sharding")
    assert ctxs[0].records[0].num_matches == 6  # q, k, v, up column-split; o, down row-split
    assert _styles(ctxs[0]) == {"q.weight": "colwise", "k.weight": "colwise", "v.weight": "colwise",
                                "o.weight": "rowwise", "up.weight": "colwise", "down.weight": "rowwise"}
    assert ops_in(graphs[0]) == ops_in(gm)  # detection only: the graph is unchanged
    edits = {(e.node, e.index): e.value for e in ctxs[1].sharding_plan.args}
    views = {n.name: list(n.args[1]) for n in gm.graph.nodes if op_name(n) in ("aten.view", "aten.reshape")}
    changed = {name: edits[(name, 1)] for name in views if (name, 1) in edits}
    assert sorted(v[2] for v in changed.values()) == [1, 1, 2, 16]  # q 4 -> 2, k/v 2 -> 1 heads, 32 -> 16 feats
    split = ctxs[1].sharding_plan.splits
    assert split["q.weight"].ranges == [(16, 32)] and split["o.weight"].dim == 1
    assert "o.bias" not in split and split["q.bias"].ranges == [(16, 32)]  # a row-split bias is added once, whole


def test_toy_block_sharded_computes_the_same_function():
    toy, _, graphs, ctxs = _toy_ranks(odd=False)
    load_reference(graphs, ctxs, toy)
    for shape in ((2, 5, 32), (3, 2, 32)):  # a second input shape
        x = torch.randn(*shape)
        outs, counts = run_ranks(graphs, x)
        with torch.no_grad():
            want = toy(x)
        assert counts == {"all_reduce": 2, "all_gather": 0}
        assert all(torch.allclose(o, want, atol=1e-6) for o in outs)
    names = ops_in(graphs[0])
    assert names.count("auto_deploy.torch_dist_all_reduce") == 2
    # the row-split biases are added after the all-reduce (once), not inside the split linear
    adds = [n for n in graphs[0].graph.nodes if op_name(n) == "aten.add.Tensor"
            and op_name(n.args[0]) == "auto_deploy.torch_dist_all_reduce"]
    assert {str(n.args[1].target) for n in adds} == {"o.bias", "down.bias"}


def test_an_unknown_op_in_a_block_falls_back_to_gathered_linears():
    toy, _, graphs, ctxs = _toy_ranks(odd=True)
    styles = _styles(ctxs[0])
    assert (styles["up.weight"], styles["down.weight"]) == ("gather", "gather")
    fallback = next(d for d in ctxs[0].facts.sharding["decisions"] if d["weight"] == "up.weight")
    assert fallback["fallback"] == "wanted colwise" and "aten.cumsum" in fallback["why"]
    assert styles["o.weight"] == "rowwise"  # the attention block is still proven
    load_reference(graphs, ctxs, toy)
    x = torch.randn(2, 5, 32)
    outs, counts = run_ranks(graphs, x)
    assert counts == {"all_reduce": 1, "all_gather": 2}
    with torch.no_grad():
        assert all(torch.allclose(o, toy(x), atol=1e-5) for o in outs)


def test_world_size_one_is_untouched():
    _, _, _, ctxs = _toy_ranks(odd=False, world_size=1, through="detect_sharding")
    assert ctxs[0].records[0].num_matches == 0 and ctxs[0].sharding_plan is None


def test_llama_plan_and_applying_detection_twice(tiny_dir):
    cfg = resolve([], BASE + ["world_size=2"], model=str(tiny_dir("llama")))
    graphs, ctxs = rank_graphs(cfg, 2, through="detect_sharding")
    first = ctxs[1].facts.sharding
    assert first["counts"] == {"colwise": 10, "rowwise": 4, "gather": 1, "vocab-parallel": 1}
    assert first["collectives"] == {"all_reduce": 5, "all_gather": 1}
    assert {d["source"] for d in first["decisions"] if d["style"] in ("colwise", "rowwise")} == {"factory"}
    records, _ = run_transforms(graphs[1], ["detect_sharding"], ctxs[1], {"detect_sharding": {"stage": "sharding"}})
    assert ctxs[1].facts.sharding == first and records[0].num_matches == 16


def test_heads_that_do_not_split_give_the_valid_world_sizes(tiny_dir):
    cfg = resolve([], BASE + ["world_size=3"], model=str(tiny_dir("llama")))
    with pytest.raises(ADError, match=r"`world_size: 3` does not fit .*num_attention_heads=4 .*Valid world sizes for "
                                      r"this model: 1, 2, 4\."):
        rank_graphs(cfg, 3, through="detect_sharding")


def test_plan_keys_match_like_autodeploy():
    assert plan_regex("q_proj").match("model.layers.0.self_attn.q_proj.weight")
    assert plan_regex("layers.*.mlp.down_proj").match("model.layers.11.mlp.down_proj.weight")
    assert not plan_regex("layers.*.mlp.down_proj").match("model.layers.11.mlp.up_proj.weight")
    assert plan_regex("up_proj").match("model.layers.0.mlp.gate_up_proj.weight")  # substring, as in AutoDeploy


def test_manual_styles_gather_mamba_and_local(tiny_dir):
    plan = {"q_proj": "gather", "in_proj": "mamba", "shared_expert.down_proj": "local_rowwise",
            "o_proj": "local_colwise", "lm_head": "colwise"}
    cfg = resolve([], BASE + ["world_size=2"], model=str(tiny_dir("qwen2_moe")))
    cfg.transforms["detect_sharding"] = {"stage": "sharding", "manual_config": {"tp_plan": plan}}
    _, ctxs = rank_graphs(cfg, 2, through="detect_sharding")
    report = ctxs[0].facts.sharding
    rows = {d["weight"]: d for d in report["decisions"]}
    assert rows["model.layers.0.self_attn.q_proj.weight"]["style"] == "gather"
    assert rows["model.layers.0.self_attn.q_proj.weight"]["source"] == "manual"
    # local_rowwise on a shared expert is rowwise; its block is proven with the heuristic's openers
    shared = rows["model.layers.0.mlp.shared_expert.down_proj.weight"]
    assert (shared["style"], shared["source"]) == ("rowwise", "manual")
    assert rows["lm_head.weight"]["style"] == "gather" and rows["lm_head.weight"]["fallback"] == "wanted colwise"
    assert "manual tp_plan `in_proj: mamba` waits for SSM layers (ad has none yet; this model has no linear it " \
           "matches)" in report["notes"]
    assert any("`o_proj: local_colwise`: local styles apply to shared experts only" in n for n in report["notes"])
    # o_proj is left to the factory plan (rowwise), but q_proj is gathered: no column -> row block, so gathered too
    o_proj = rows["model.layers.0.self_attn.o_proj.weight"]
    assert (o_proj["style"], o_proj["source"], o_proj["fallback"]) == ("gather", "factory", "wanted rowwise")
