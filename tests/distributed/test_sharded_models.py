"""world_size N == world_size 1: logits of a prefill (float32, tight tolerance) and greedy tokens of a batch of
prompts, for tiny models of each family, with real processes on gloo (one driver session builds them all).

ws=2: Llama, Qwen2 (biases), Gemma 3 (sliding window, per-head norms), Phi-3 (fused QKV and gate/up), Mixtral and
Qwen3-MoE (experts spread over the ranks), Llama with the factory plan only. ws=4: Llama's 2 KV heads replicated.
"""

from __future__ import annotations

import pytest

from tests.distributed.sessions import measure_here, overrides, rel_err, session

FAMILIES = ["llama", "qwen2", "gemma3", "phi3", "mixtral", "qwen3_moe"]
FACTORY_ONLY = "transforms.detect_sharding.sharding_source=[factory]"


@pytest.fixture(scope="module")
def two_ranks(tiny_dir, tmp_path_factory):
    jobs = {f: overrides(tiny_dir(f), 2) for f in FAMILIES}
    jobs["llama_factory"] = overrides(tiny_dir("llama"), 2, FACTORY_ONLY)
    return session(jobs, tmp_path_factory.mktemp("ws2"))


def _same_as_one_rank(got: dict, model_dir, *extra: str) -> None:
    one = measure_here(overrides(model_dir, 1, *extra))
    assert got["tokens"] == one["tokens"] and all(len(t) == 6 for t in got["tokens"])
    assert got["logits"].shape == one["logits"].shape
    assert rel_err(got["logits"], one["logits"]) < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_two_ranks_compute_what_one_computes(two_ranks, tiny_dir, family):
    _same_as_one_rank(two_ranks[family], tiny_dir(family))
    report = two_ranks[family]["sharding"]
    assert report["world_size"] == 2 and report["rank"] == 0
    styles = report["counts"]
    if family in ("mixtral", "qwen3_moe"):
        assert styles["expert-parallel"] == 2 and styles["rowwise"] == 2  # attention blocks + experts
        assert report["collectives"]["all_reduce"] == 5
    else:
        assert styles["rowwise"] == 4 and report["collectives"] == {"all_reduce": 5, "all_gather": 1}
    assert not any(d.get("fallback") for d in report["decisions"])


def test_phi3_fused_projections_split_per_part(two_ranks):
    rows = {d["weight"]: d for d in two_ranks["phi3"]["sharding"]["decisions"]}
    qkv = rows["model.layers.0.self_attn.qkv_proj.weight"]
    assert (qkv["style"], qkv["source"], qkv["local_shape"]) == ("colwise", "heuristic", [64, 64])
    assert rows["model.layers.0.mlp.gate_up_proj.weight"]["local_shape"] == [96, 64]


def test_factory_plan(two_ranks, tiny_dir):
    got = two_ranks["llama_factory"]
    _same_as_one_rank(got, tiny_dir("llama"), FACTORY_ONLY)
    rows = got["sharding"]["decisions"]
    assert {d["source"] for d in rows if d["style"] in ("colwise", "rowwise")} == {"factory"}
    assert {d["weight"]: d["style"] for d in rows}["lm_head.weight"] == "replicated"  # no heuristic: kept whole


def test_four_ranks_replicate_two_kv_heads(tiny_dir, tmp_path):
    got = session({"llama": overrides(tiny_dir("llama"), 4)}, tmp_path)["llama"]
    _same_as_one_rank(got, tiny_dir("llama"))
    k = {d["weight"]: d for d in got["sharding"]["decisions"]}["model.layers.0.self_attn.k_proj.weight"]
    assert k["local_shape"] == [16, 64]  # one KV head of 16 per rank, shared by ranks (0, 1) and (2, 3)
