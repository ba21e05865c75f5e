"""MLA backends on the GPU (marked gpu): greedy tokens of a tiny float32 DeepSeek-V3 equal across mla_backend x
compile_backend (CUDA-graph padding included), and bf16 logits of a DeepSeek-V3-shaped two-layer model (latent
512, RoPE 64, 16 heads, yarn RoPE) through fresh prefill, chunked prefill and CUDA-graph decode stay within
tolerance of the torch backend."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.llm import build_engine
from autodeploy_cli.runtime.engine import SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
PROMPTS = [[5, 9, 200, 31, 7, 77, 12], [42, 3], [100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 2]]
_CACHE: dict = {}


@pytest.fixture(scope="module")
def tiny_v3(tmp_path_factory):
    from tests.tiny_models import YARN, write_tiny_model_dir

    return write_tiny_model_dir(tmp_path_factory.mktemp("mla_tiny"), "deepseek_v3", **YARN)


@pytest.fixture(scope="module")
def dsv3_shaped(tmp_path_factory):
    from tests.tiny_models import write_tiny_model_dir

    yarn = dict(rope_type="yarn", factor=40.0, original_max_position_embeddings=4096, mscale=1.0, mscale_all_dim=1.0,
                beta_fast=32, beta_slow=1)
    return write_tiny_model_dir(tmp_path_factory.mktemp("mla_dsv3"), "deepseek_v3", hidden_size=2048,
                                intermediate_size=4096, num_attention_heads=16, num_key_value_heads=16,
                                kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, qk_nope_head_dim=128,
                                v_head_dim=128, vocab_size=4096, max_position_embeddings=163840, rope_scaling=yarn)


def _tokens(model_dir, *overrides):
    cfg = resolve([], ["skip_loading_weights=true", "max_seq_len=64", "max_batch_size=4", "attn_page_size=4",
                       "device=cuda", "dtype=float32", *overrides], model=str(model_dir))
    engine = build_engine(cfg)
    out = engine.generate(PROMPTS, SamplingParams(max_tokens=6, ignore_eos=True))
    return [c.token_ids for c in out], engine


@pytest.mark.parametrize("mla", ["triton", "flashinfer"])
@pytest.mark.parametrize("compile_backend", ["torch-simple", "torch-cudagraph"])
def test_tokens_identical_across_mla_backends(tiny_v3, mla, compile_backend):
    if "ref" not in _CACHE:
        _CACHE["ref"] = _tokens(tiny_v3, "mla_backend=torch")[0]
    got, engine = _tokens(tiny_v3, f"mla_backend={mla}", f"compile_backend={compile_backend}",
                          "cuda_graph_batch_sizes=[1,4]")
    assert got == _CACHE["ref"]
    assert engine.build_result.report["canonical_ops"].get(f"auto_deploy.{mla}_mla_with_paged_cache") == 2
    if compile_backend == "torch-cudagraph":
        assert engine.model.replays > 0


def _steps(model_dir, backend):
    """Logits of: a fresh prefill of 2 prompts (300 and 77 tokens), a mixed step (50 more tokens of the first, one
    decode token of the second), then two decode-only steps (CUDA graphs)."""
    cfg = resolve([], ["skip_loading_weights=true", "device=cuda", "dtype=bfloat16", "max_seq_len=512",
                       "max_batch_size=4", "attn_page_size=64", f"mla_backend={backend}",
                       "compile_backend=torch-cudagraph", "cuda_graph_batch_sizes=[1,2,4]"], model=str(model_dir))
    engine = build_engine(cfg)
    iface, model = engine.iface, engine.model
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 4096, (360,), generator=g).tolist(), torch.randint(0, 4096, (90,), generator=g).tolist()
    pages = [list(range(0, 6)), list(range(6, 8))]
    outs = []
    for tokens, pos, n_pre in (([a[:300], b[:77]], [0, 0], 2), ([a[300:350], b[77:78]], [300, 77], 1),
                               ([a[350:351], b[78:79]], [350, 78], 0), ([a[351:352], b[79:80]], [351, 79], 0)):
        iface.info.set_batch(tokens, pos, pages, num_prefill=n_pre, gather="all")
        with torch.no_grad():
            outs.append(iface.forward(model).float().clone())
    return outs, engine


@pytest.mark.parametrize("backend", ["triton", "flashinfer"])
def test_bf16_dsv3_shaped_logits_fresh_chunked_decode(dsv3_shaped, backend):
    if "bf16_ref" not in _CACHE:
        _CACHE["bf16_ref"] = _steps(dsv3_shaped, "torch")[0]
    got, engine = _steps(dsv3_shaped, backend)
    for step, (x, ref) in enumerate(zip(got, _CACHE["bf16_ref"])):
        assert ((x - ref).norm() / ref.norm()).item() < 2e-2, step
    assert engine.model.replays == 2  # both decode-only steps replayed a graph
