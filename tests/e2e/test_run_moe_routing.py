"""MoE routing forms end to end (float32, CPU): `ad build --verify` passes with every MoE block canonical, and
`ad run` reproduces HF generate token for token. One tiny config per routing form (tests/tiny_models.py):

  olmoe          softmax top-k without renormalisation
  granitemoe     top-k of the logits, softmax over the kept k
  phimoe         sparsemixer top-2
  gpt_oss        router bias; transposed, interleaved gate|up with biases; clamped SwiGLU (+ attention sinks)
  deepseek_v3    sigmoid + correction bias, group-limited top-k, renormalised, routed scaling; shared expert (MLA
                 attention exported as plain attention)
  deepseek_v2    softmax + group-limited greedy top-k, routed scaling; shared expert
  dots1          DeepSeek-V3 routing in a GQA model
  llama4_text    top-1 sigmoid applied to the expert input; shared expert
  qwen2_moe      softmax top-k; a sigmoid-gated shared expert
  nemotron_h_moe non-gated relu^2 experts (and non-gated GELU ones); shared expert
  qwen3_moe      with dims that are not multiples of 8 (60 / 30: transformers' grouped_mm cannot run them)
plus the fused MoE op's backends: triton (the interpreter on CPU) gives the torch backend's tokens.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before kernels.triton is imported anywhere in this process
    os.environ.setdefault("TRITON_INTERPRET", "1")

from autodeploy_cli.config.loader import resolve  # noqa: E402
from autodeploy_cli.llm import build_engine  # noqa: E402
from autodeploy_cli.pipeline.build import build  # noqa: E402
from autodeploy_cli.runtime.engine import SamplingParams  # noqa: E402
from tests.e2e.hf_match import check_ad_run  # noqa: E402

CASES = {  # case -> (family, HF config overrides, MoE layers)
    "olmoe": ("olmoe", {}, 2), "granitemoe": ("granitemoe", {}, 2), "phimoe": ("phimoe", {}, 2),
    "gpt_oss": ("gpt_oss", {}, 2), "deepseek_v3": ("deepseek_v3_moe", {}, 1), "deepseek_v2": ("deepseek_v2_moe", {}, 1),
    "dots1": ("dots1", {}, 1), "llama4_text": ("llama4_text", {}, 2), "qwen2_moe": ("qwen2_moe", {}, 2),
    "nemotron_h_moe": ("nemotron_h_moe", {}, 1),
    "nemotron_h_moe_gelu": ("nemotron_h_moe", {"mlp_hidden_act": "gelu"}, 1),  # non-gated GELU experts
    "qwen3_moe_unaligned": ("qwen3_moe", {"hidden_size": 60, "moe_intermediate_size": 30}, 2),
}
ACTS = {"gpt_oss": "swiglu_oai", "nemotron_h_moe": "relu2", "nemotron_h_moe_gelu": "gelu"}  # else silu
FUSED = {"torch": "auto_deploy.torch_moe_fused", "triton": "auto_deploy.triton_moe_fused"}


def _ops(gm) -> list[str]:
    from autodeploy_cli.graph.core import op_name

    return [op_name(n) for n in gm.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("case", list(CASES))
def test_build_verifies_and_run_matches_hf_generate(case, tiny_dir):
    family, overrides, moe_layers = CASES[case]
    model_dir = tiny_dir(family, **overrides)
    cfg = resolve([], [f"model={model_dir}", "skip_loading_weights=true", "dtype=float32", "device=cpu"])
    result = build(cfg, verify=True)
    assert result.verify_failure is None and result.report["verify"]["ok"]
    moe = next(r for r in result.report["coverage"] if r["kind"] == "moe")
    assert (moe["found"], moe["expected"], moe["hint"]) == (moe_layers, moe_layers, "")
    assert moe["detail"].startswith("experts implementation: export patch")
    ops = _ops(result.model)  # torch-simple on CPU: the final GraphModule
    assert ops.count(FUSED["torch"]) == moe_layers and "auto_deploy.torch_moe" not in ops
    fused = [n for n in result.model.graph.nodes if n.op == "call_function" and "moe_fused" in str(n.target)]
    assert {n.kwargs["act"] for n in fused} == {ACTS.get(case, "silu")}
    check_ad_run(model_dir, family, "attn_page_size=4")


def _tokens(model_dir, backend: str) -> list[list[int]]:
    cfg = resolve([], [f"model={model_dir}", "skip_loading_weights=true", "dtype=float32", "device=cpu",
                       "max_seq_len=64", "max_batch_size=4", "attn_page_size=4",
                       f"transforms.fuse_moe.backend={backend}"])
    engine = build_engine(cfg)
    batch = [[5, 9, 200, 31, 7, 77, 12, 40, 41, 42, 43, 44], [42, 3], [100, 101, 102]]
    sp = SamplingParams(max_tokens=4, ignore_eos=True)
    # 3 sequences: grouped GEMMs (prefill and decode); one sequence's decode (2 pairs <= E/2): the pairwise path
    return [c.token_ids for prompts in (batch, batch[:1]) for c in engine.generate(prompts, sp)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="Triton's CPU interpreter is off on a GPU machine; "
                    "tests/kernels/triton/test_triton_moe.py covers the kernels there")
def test_triton_moe_backend_tokens_match_torch_on_cpu(tiny_dir):
    model_dir = tiny_dir("qwen3_moe")
    assert _tokens(model_dir, "triton") == _tokens(model_dir, "torch")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss", "llama4_text"])
def test_gpu_default_pipeline_cuda_graphs_triton_moe_matches_hf(family, tiny_dir):
    """float32 on the GPU: triton attention, torch-cudagraph (decode graphs at every batch size) and the Triton MoE
    give HF generate's greedy tokens."""
    from tests.e2e.hf_match import hf_greedy

    model_dir = tiny_dir(family)
    cfg = resolve([], [f"model={model_dir}", "skip_loading_weights=true", "dtype=float32", "device=cuda",
                       "max_seq_len=64", "max_batch_size=4", "attn_page_size=4"])
    engine = build_engine(cfg)
    facts = engine.build_result.ctx.facts
    assert (facts.attention_backend, facts.compile_backend) == ("triton", "torch-cudagraph")
    fuse = next(r for r in engine.build_result.records if r.name == "fuse_moe")
    moe_layers = CASES[family][2] if family in CASES else 2  # qwen3_moe: both layers are MoE
    assert fuse.num_matches == moe_layers and fuse.note == "backend triton"
    prompts = [[5, 9, 200, 31, 7, 77, 12, 40, 41, 42, 43, 44], [42, 3], [100, 101, 102]]
    got = [c.token_ids for c in engine.generate(prompts, SamplingParams(max_tokens=6, ignore_eos=True))]
    assert got == hf_greedy(cfg, prompts, max_new_tokens=6)
