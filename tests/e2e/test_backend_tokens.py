"""Greedy tokens of a tiny float32 model are identical across attention backends and compile backends.

CPU: torch vs triton (Triton's interpreter) with torch-simple, and torch-compile (dynamo, no recompile storm across
batch shapes). GPU (marked gpu): every attn_backend x compile_backend combination, including CUDA-graph padding,
plus bf16 logits of an 8B-shaped two-layer Llama within tolerance of the torch backend.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before kernels.triton is imported anywhere in this process
    os.environ.setdefault("TRITON_INTERPRET", "1")

from autodeploy_cli.config.loader import resolve  # noqa: E402
from autodeploy_cli.llm import build_engine  # noqa: E402
from autodeploy_cli.runtime.engine import SamplingParams  # noqa: E402

PROMPTS = [[5, 9, 200, 31, 7, 77, 12], [42, 3], [100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 2]]
_CACHE: dict = {}
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _tokens(model_dir, *overrides, prompts=PROMPTS, max_tokens=6):
    cfg = resolve([], ["skip_loading_weights=true", "max_seq_len=64", "max_batch_size=4", "attn_page_size=4",
                       *overrides], model=str(model_dir))
    engine = build_engine(cfg)
    out = engine.generate(prompts, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    return [c.token_ids for c in out], engine


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from tests.tiny_models import write_tiny_model_dir

    return write_tiny_model_dir(tmp_path_factory.mktemp("tok_llama"), "llama")


@pytest.mark.skipif(torch.cuda.is_available(), reason="Triton's CPU interpreter is off on a GPU machine; "
                    "test_gpu_tokens_identical_across_backends covers triton there")
def test_triton_backend_tokens_match_torch_on_cpu(llama_dir):
    ref, _ = _tokens(llama_dir, "attn_backend=torch", "device=cpu", "dtype=float32")
    got, _ = _tokens(llama_dir, "attn_backend=triton", "device=cpu", "dtype=float32")
    assert got == ref and all(len(t) == 6 for t in ref)


def test_torch_compile_no_recompile_storm(llama_dir):
    import torch._dynamo
    from torch._dynamo.utils import counters

    ref, _ = _tokens(llama_dir, "device=cpu", "dtype=float32")
    torch._dynamo.reset()
    counters.clear()
    # batches of 3 prefills, then decodes of 3, 2 and 1 sequences (different max_tokens finish them in turn)
    cfg = resolve([], ["skip_loading_weights=true", "max_seq_len=64", "max_batch_size=4", "attn_page_size=4",
                       "device=cpu", "dtype=float32", "compile_backend=torch-compile",
                       "transforms.compile_model.dynamo_backend=eager"], model=str(llama_dir))
    engine = build_engine(cfg)
    outs = engine.generate(PROMPTS, [SamplingParams(max_tokens=n, ignore_eos=True) for n in (6, 4, 2)])
    assert [c.token_ids for c in outs] == [ref[0], ref[1][:4], ref[2][:2]]
    # one dynamic graph, plus at most the size-1 specialisations (one sequence / one token)
    assert counters["stats"]["unique_graphs"] <= 3


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("attn", ["torch", "triton", "flashinfer"])
@pytest.mark.parametrize("compile_backend", ["torch-simple", "torch-compile", "torch-cudagraph", "torch-opt"])
def test_gpu_tokens_identical_across_backends(llama_dir, attn, compile_backend):
    if "gpu_ref" not in _CACHE:
        _CACHE["gpu_ref"] = _tokens(llama_dir, "attn_backend=torch", "device=cuda", "dtype=float32")[0]
    ref = _CACHE["gpu_ref"]
    got, engine = _tokens(llama_dir, f"attn_backend={attn}", f"compile_backend={compile_backend}", "device=cuda",
                          "dtype=float32", "cuda_graph_batch_sizes=[1,4]")
    assert got == ref
    if compile_backend in ("torch-cudagraph", "torch-opt"):
        assert engine.model.replays > 0  # decode steps (3 sequences padded to 4, then fewer) replayed graphs


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("attn", ["triton", "flashinfer"])
def test_gpu_bf16_8b_shaped_logits(tmp_path_factory, attn):
    from tests.tiny_models import write_tiny_model_dir

    d = write_tiny_model_dir(tmp_path_factory.mktemp("llama8b"), "llama", hidden_size=4096, intermediate_size=14336,
                             num_attention_heads=32, num_key_value_heads=8, head_dim=128, num_hidden_layers=2,
                             vocab_size=128256, max_position_embeddings=4096)

    def logits(backend):
        cfg = resolve([], ["skip_loading_weights=true", "device=cuda", "dtype=bfloat16", "max_seq_len=1024",
                           "max_batch_size=4", "attn_page_size=16", f"attn_backend={backend}"], model=str(d))
        engine = build_engine(cfg)
        ids = torch.randint(0, 128256, (2, 300), generator=torch.Generator().manual_seed(0))
        return engine.iface.run_prefill(engine.model, ids.cuda(), gather="all").float()

    ref, got = logits("torch"), logits(attn)
    assert ((got - ref).norm() / ref.norm()).item() < 2e-2
