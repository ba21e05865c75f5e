"""Sharding on GPUs (marked gpu; each test needs 2 or 4 visible GPUs and skips otherwise): NCCL, CUDA graphs with
the all-reduces captured inside, the overlap path across ranks. world_size N against world_size 1 on GPU 0:
  * tiny float32 Llama: greedy tokens equal, logits tight, decode steps replayed CUDA graphs;
  * bf16 logits within bf16 tolerance for an 8B-shaped two-layer Llama, a Qwen3-30B-A3B-shaped two-layer MoE
    (experts spread over the ranks) and a Llama with fewer KV heads than ranks (replicated).
Keep NCCL_NVLS_ENABLE=0 (no NVLink multicast) on the lent machines.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.distributed.sessions import measure_here, rel_err, session

pytestmark = pytest.mark.gpu
os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
GPU_BASE = ["skip_loading_weights=true", "device=cuda", "max_seq_len=1024", "max_batch_size=4", "attn_page_size=16"]
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                num_hidden_layers=2, vocab_size=128256, max_position_embeddings=4096)
QWEN3_MOE_30B = dict(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_attention_heads=32,
                     num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8, num_hidden_layers=2,
                     vocab_size=151936, max_position_embeddings=4096, norm_topk_prob=True)


def gpus(n: int):
    return pytest.mark.skipif(torch.cuda.device_count() < n, reason=f"needs {n} GPUs")


def _cfg(model_dir, world_size: int, *extra: str) -> list[str]:
    return [f"model={model_dir}", f"world_size={world_size}", *GPU_BASE, *extra]


def _norm_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@gpus(2)
@pytest.mark.parametrize("world_size", [2, pytest.param(4, marks=gpus(4))])
def test_tiny_float32_tokens_and_cuda_graph_replays(tiny_dir, tmp_path, world_size):
    d = tiny_dir("llama")
    got = session({"llama": _cfg(d, world_size, "dtype=float32")}, tmp_path)["llama"]
    one = measure_here(_cfg(d, 1, "dtype=float32"))
    assert got["tokens"] == one["tokens"]
    assert rel_err(got["logits"], one["logits"]) < 1e-4
    assert got["replays"] > 0  # decode steps replayed CUDA graphs holding the NCCL all-reduces


@gpus(2)
@pytest.mark.parametrize("family,shape,name", [("llama", LLAMA_8B, "llama-8b-2l"),
                                               ("qwen3_moe", QWEN3_MOE_30B, "qwen3-30b-a3b-2l"),
                                               ("llama", dict(LLAMA_8B, num_key_value_heads=1), "llama-8b-2l-1kv")])
def test_bf16_logits_match_one_rank(tmp_path_factory, tmp_path, family, shape, name):
    from tests.tiny_models import write_tiny_model_dir

    d = write_tiny_model_dir(tmp_path_factory.mktemp(name), family, **shape)
    got = session({name: _cfg(d, 2, "dtype=bfloat16")}, tmp_path)[name]
    one = measure_here(_cfg(d, 1, "dtype=bfloat16"))
    assert _norm_err(got["logits"], one["logits"]) < 2e-2
    styles = got["sharding"]["counts"]
    if family == "qwen3_moe":
        assert styles["expert-parallel"] == 2
    assert not any(r.get("fallback") for r in got["sharding"]["decisions"])


@gpus(4)
def test_four_ranks_two_kv_heads_bf16(tmp_path_factory, tmp_path):
    from tests.tiny_models import write_tiny_model_dir

    d = write_tiny_model_dir(tmp_path_factory.mktemp("gqa4"), "llama", **dict(LLAMA_8B, num_key_value_heads=2))
    got = session({"gqa": _cfg(d, 4, "dtype=bfloat16")}, tmp_path)["gqa"]
    one = measure_here(_cfg(d, 1, "dtype=bfloat16"))
    assert _norm_err(got["logits"], one["logits"]) < 2e-2
