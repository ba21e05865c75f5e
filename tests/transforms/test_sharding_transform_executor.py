"""sharding_transform_executor: each rank's graph (its weights, rescaled sizes, collectives) computes the HF model's
function together with the other ranks. Ranks are threads here (tests/transforms/sharding_helpers.py)."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.graph.core import op_name
from autodeploy_cli.models.factory import ModelFactory
from autodeploy_cli.models.weights import assign_weights, source_tensors
from tests.transforms.pattern_helpers import ops_in, run_transforms
from tests.transforms.sharding_helpers import load_reference, rank_graphs, run_ranks

BASE = ["skip_loading_weights=true", "dtype=float32", "max_seq_len=64", "max_batch_size=4", "device=cpu"]
INT_MAX = 2**63 - 1


def _sharded(model_dir, world_size: int, *extra: str):
    cfg = resolve([], BASE + [f"world_size={world_size}", *extra], model=str(model_dir))
    graphs, ctxs = rank_graphs(cfg, world_size, through="sharding_transform_executor")
    ref = ModelFactory(cfg).materialize()
    load_reference(graphs, ctxs, ref)
    return graphs, ctxs, ref


def _assert_same_logits(graphs, ref, shapes=((2, 7), (3, 4))):
    gen = torch.Generator().manual_seed(0)
    for b, s in shapes:
        ids = torch.randint(0, ref.config.vocab_size, (b, s), generator=gen)
        pos = torch.arange(s).expand(b, s).contiguous()
        with torch.no_grad():
            want = ref(input_ids=ids, position_ids=pos).logits
        outs, _ = run_ranks(graphs, ids, pos)
        for out in outs:
            assert ((out - want).abs().max() / want.abs().max()).item() < 1e-5


def test_llama_ranks_hold_their_parts_and_compute_the_model(tiny_dir):
    graphs, ctxs, ref = _sharded(tiny_dir("llama"), 2)
    names = ops_in(graphs[0])
    assert names.count("auto_deploy.torch_dist_all_reduce") == 5  # 2 layers x (attention, MLP) + the embedding
    assert names.count("auto_deploy.torch_dist_all_gather") == 1  # the logits
    shapes = {n: tuple(p.shape) for n, p in graphs[1].named_parameters()}
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == (32, 64)
    assert shapes["model.layers.0.self_attn.o_proj.weight"] == (64, 32)
    assert shapes["model.embed_tokens.weight"] == (160, 64) and shapes["lm_head.weight"] == (160, 64)
    full = dict(ref.named_parameters())
    got = dict(graphs[1].named_parameters())
    assert torch.equal(got["model.layers.0.mlp.down_proj.weight"], full["model.layers.0.mlp.down_proj.weight"][:, 48:])
    _assert_same_logits(graphs, ref)
    records, _ = run_transforms(graphs[0], ["sharding_transform_executor"], ctxs[0],
                                {"sharding_transform_executor": {"stage": "sharding"}})
    assert records[0].num_matches == 0  # applied twice: the plan is spent


def test_fused_qkv_and_gate_up_are_split_per_part(tiny_dir):
    graphs, ctxs, ref = _sharded(tiny_dir("phi3"), 2)
    slices = [n.args[2:4] for n in graphs[1].graph.nodes if op_name(n) == "aten.slice.Tensor"
              and n.args[0].op == "call_function" and op_name(n.args[0]) == "aten.linear"]
    assert sorted(slices) == [(0, 32), (0, 32), (32, 48), (32, 48), (48, INT_MAX), (48, INT_MAX)]  # 2 layers:
    # q 64 -> 32, k and v 32 -> 16 features
    qkv = dict(graphs[1].named_parameters())["model.layers.0.self_attn.qkv_proj.weight"]
    full = dict(ref.named_parameters())["model.layers.0.self_attn.qkv_proj.weight"]
    assert torch.equal(qkv, torch.cat([full[32:64], full[80:96], full[112:128]]))  # rank 1's q, k and v rows
    assert ctxs[0].facts.sharding["collectives"] == {"all_reduce": 5, "all_gather": 1}
    _assert_same_logits(graphs, ref)


def test_fewer_kv_heads_than_ranks_replicate_them(tiny_dir):
    graphs, ctxs, ref = _sharded(tiny_dir("llama"), 4)  # 2 KV heads, 4 ranks: ranks 0,1 share KV head 0
    k = [dict(g.named_parameters())["model.layers.0.self_attn.k_proj.weight"] for g in graphs]
    assert k[0].shape == (16, 64) and torch.equal(k[0], k[1]) and torch.equal(k[2], k[3])
    assert not torch.equal(k[1], k[2])
    _assert_same_logits(graphs, ref, shapes=((2, 5),))


def test_experts_spread_over_ranks(tiny_dir):
    graphs, ctxs, ref = _sharded(tiny_dir("qwen3_moe"), 2)
    moe = [n for n in graphs[1].graph.nodes if op_name(n) == "auto_deploy.torch_moe"]
    assert len(moe) == 2 and all(len(n.args[3]) == 2 for n in moe)  # experts 2 and 3 on rank 1
    assert op_name(moe[0].args[1]) == "aten.sub.Tensor" and moe[0].args[1].args[1] == 2  # ids made local
    assert "model.layers.0.mlp.experts.0.gate_proj.weight" not in dict(graphs[1].named_parameters())
    _assert_same_logits(graphs, ref)


def test_fewer_experts_than_ranks_split_every_expert(tiny_dir):
    graphs, ctxs, ref = _sharded(tiny_dir("qwen3_moe", num_experts=2), 4)
    rows = [d for d in ctxs[0].facts.sharding["decisions"] if d["node"].startswith("torch_moe")]
    assert {d["style"] for d in rows} == {"expert-tensor-parallel"}
    gate = dict(graphs[2].named_parameters())["model.layers.0.mlp.experts.1.gate_proj.weight"]
    assert gate.shape == (8, 64)  # 32 features / 4 ranks
    _assert_same_logits(graphs, ref, shapes=((2, 5),))


def test_tied_embedding_and_lm_head_share_one_split(tiny_dir):
    graphs, ctxs, ref = _sharded(tiny_dir("gemma", tie_word_embeddings=True), 2)
    rows = {d["node"]: d for d in ctxs[0].facts.sharding["decisions"]}
    head = next(d for d in rows.values() if d["style"] == "gather")
    assert rows["embedding"]["weight"] == head["weight"]  # export keeps one tied tensor
    assert rows["embedding"]["style"] == "vocab-parallel" and rows["embedding"]["why"].endswith("(tied to lm_head)")
    _assert_same_logits(graphs, ref)


def test_a_pre_sharded_state_dict_loads_as_it_is(tiny_dir):
    cfg = resolve([], BASE + ["world_size=2"], model=str(tiny_dir("qwen2")))
    graphs, ctxs = rank_graphs(cfg, 2, through="sharding_transform_executor")
    ref = ModelFactory(cfg).materialize()
    load_reference(graphs, ctxs, ref)
    per_rank = {n: t.clone() for n, t in graphs[1].state_dict().items()}  # rank 1's own tensors
    again, again_ctx = rank_graphs(cfg, 2, through="sharding_transform_executor")
    full = source_tensors(ref)
    assign_weights(again[1], {**full, **per_rank}, again_ctx[1].weight_hooks, again_ctx[1].weight_slicers)
    for name, t in again[1].state_dict().items():
        assert torch.equal(t, per_rank[name]), name
    with pytest.raises(ValueError, match=r"expected a tensor of shape \[64, 64\] \(or \[32, 64\] pre-sharded\)"):
        again_ctx[0].weight_slicers["model.layers.0.self_attn.q_proj.weight"](torch.zeros(16, 64))


def test_simple_shard_only_gathers_every_linear(tiny_dir):
    graphs, ctxs, ref = _sharded(tiny_dir("llama"), 2, "transforms.detect_sharding.simple_shard_only=true")
    report = ctxs[0].facts.sharding
    assert report["counts"] == {"gather": 15, "vocab-parallel": 1}  # 14 block linears + lm_head
    assert report["collectives"] == {"all_reduce": 1, "all_gather": 15}
    _assert_same_logits(graphs, ref, shapes=((2, 5),))
