"""Older dense forms deploy (issue 21): ALiBi (Bloom, MPT, Falcon), learned and sinusoidal absolute positions (GPT-2,
OPT, GPT-Neo, XGLM, CTRL), parallel attention + MLP (Falcon, GPT-J, GPT-NeoX), LayerNorm with bias, tied and untied
heads, multi-query attention (Falcon, GPT-BigCode), local/global layers (GPT-Neo; Gemma 3 in test_run_gemma3.py).

Each family: `ad build --verify` passes (logits after every transform and the generation check) with every layer's
attention (and RoPE) canonical, and `ad run` greedy tokens equal HF `generate` for prompts of different lengths in
one batch. ALiBi slopes equal the ones HF computes. What cannot be deployed is refused at build time.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before kernels.triton is imported anywhere in this process
    os.environ.setdefault("TRITON_INTERPRET", "1")

from typer.testing import CliRunner  # noqa: E402

from autodeploy_cli.cli import app  # noqa: E402
from autodeploy_cli.config.loader import resolve  # noqa: E402
from autodeploy_cli.errors import ADError  # noqa: E402
from autodeploy_cli.pipeline.build import build  # noqa: E402
from tests.e2e.hf_match import check_ad_run  # noqa: E402
from tests.transforms.pattern_helpers import PINNED  # noqa: E402

ROPE = {"falcon", "gpt_neox", "gpt_neox_japanese"}  # GPT-J's rotate-every-two stays plain (per-token) ops
VERIFIED = ["bloom", "mpt", "falcon_alibi", "falcon", "gpt2", "opt", "gpt_neo", "xglm", "ctrl", "gptj", "gpt_neox",
            "gpt_bigcode", "gpt_neox_japanese"]
RUN = ["bloom", "mpt", "gpt2", "gpt_neo", "xglm", "ctrl", "falcon", "gptj", "gpt_bigcode"]  # two+ per form
ALIBI = {"bloom", "mpt", "falcon_alibi"}


def _build(model_dir, *extra, verify=True):
    return build(resolve([], [f"model={model_dir}", "skip_loading_weights=true", *PINNED, "max_seq_len=64",
                              "max_batch_size=4", "attn_page_size=4", *extra]), verify=verify)


def _cached_attention(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and "attention_with_paged_cache" in str(n.target)]


def _hf_slopes(family: str, heads: int = 4) -> torch.Tensor:
    """The slopes HF's own code uses, read from its ALiBi tensor: bias(key 1) - bias(key 0) per head."""
    if family == "mpt":
        from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

        bias = build_mpt_alibi_tensor(heads, 8)  # [n, 1, 8]
    else:
        from transformers.models.bloom.modeling_bloom import build_alibi_tensor

        bias = build_alibi_tensor(torch.ones(1, 8, dtype=torch.long), heads, torch.float32)  # [n, 1, 8]
    return (bias[:, 0, 1] - bias[:, 0, 0]).float()


@pytest.mark.parametrize("family", VERIFIED)
def test_build_verify_passes_with_full_coverage(family, tiny_dir):
    result = _build(tiny_dir(family))
    assert result.verify_failure is None
    checks = {r["check"] for r in result.report["verify"]["rows"]}
    assert "generation" in checks
    rows = {r["kind"]: (r["found"], r["expected"]) for r in result.report["coverage"]}
    want = {"attention": (2, 2), **({"rope": (2, 2)} if family in ROPE else {})}
    assert rows == want
    cached = _cached_attention(result.model)
    assert len(cached) == 2
    if family in ALIBI:
        gm = result.model
        slopes = [getattr(gm, n.kwargs["alibi_slopes"].target) for n in cached]
        want_slopes = _hf_slopes("mpt" if family == "mpt" else "bloom")
        if family == "falcon_alibi":  # Falcon divides the bias by sqrt(head_dim) (and rounds slopes to bf16)
            want_slopes = want_slopes.bfloat16().float() / 4.0
        for s in slopes:
            torch.testing.assert_close(s.cpu(), want_slopes, rtol=1e-6, atol=0)
    else:
        assert all("alibi_slopes" not in n.kwargs for n in cached)


@pytest.mark.parametrize("family", RUN)
def test_ad_run_matches_hf_generate(family, tiny_dir):
    check_ad_run(tiny_dir(family), family, "attn_page_size=4")


def test_gpt_neo_local_layers_become_sliding_windows(tiny_dir):
    result = build(resolve([], [f"model={tiny_dir('gpt_neo')}", "skip_loading_weights=true", *PINNED,
                                "max_seq_len=64"]), stop_after="match_rope_layout")
    attn = [n for n in result.model.graph.nodes if "torch_attention" in str(n.target)]
    assert [n.kwargs.get("sliding_window") for n in attn] == [None, 4]  # global, then local (window_size=4)
    assert all(n.kwargs["scale"] == 1.0 and n.kwargs["is_causal"] for n in attn)  # GPT-Neo does not scale


def _backend_tokens(model_dir, device, backends, compile_backend="torch-simple"):
    from autodeploy_cli.llm import build_engine
    from autodeploy_cli.runtime.engine import SamplingParams

    prompts = [[5, 9, 200, 31, 7, 77, 12], [42, 3], list(range(100, 113))]
    tokens = []
    for backend in backends:
        cfg = resolve([], [f"model={model_dir}", "skip_loading_weights=true", f"device={device}", "dtype=float32",
                           "max_seq_len=64", "max_batch_size=4", "attn_page_size=4", f"attn_backend={backend}",
                           f"compile_backend={compile_backend}"])
        out = build_engine(cfg).generate(prompts, SamplingParams(max_tokens=5, ignore_eos=True))
        tokens.append([c.token_ids for c in out])
    return tokens


@pytest.mark.skipif(torch.cuda.is_available(), reason="Triton's CPU interpreter is off on a GPU machine")
def test_alibi_tokens_identical_on_the_triton_backend(tiny_dir):
    tokens = _backend_tokens(tiny_dir("bloom"), "cpu", ("torch", "triton"))
    assert tokens[0] == tokens[1] and all(len(t) == 5 for t in tokens[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family", ["bloom", "mpt", "falcon_alibi"])
def test_gpu_alibi_tokens_identical_across_backends_and_cuda_graphs(family, tiny_dir):
    """float32 on the GPU (triton keeps ieee precision): torch == triton, eager and replayed CUDA graphs."""
    eager = _backend_tokens(tiny_dir(family), "cuda", ("torch", "triton"))
    graphs = _backend_tokens(tiny_dir(family), "cuda", ("triton",), compile_backend="torch-cudagraph")
    assert eager[0] == eager[1] == graphs[0] and all(len(t) == 5 for t in eager[0])


def test_flashinfer_refuses_alibi_with_its_reason(tiny_dir):
    with pytest.raises(ADError) as err:
        _build(tiny_dir("bloom"), "attn_backend=flashinfer", verify=False)
    msg = str(err.value)
    assert "The `flashinfer` attention backend cannot run layer 0: ALiBi position biases are not wired to " \
           "FlashInfer's ALiBi mode" in msg and "attn_backend=triton" in msg


def test_lfm2_short_convolution_is_cached_and_runs_like_hf(tiny_dir):
    """LFM2's gated short conv reads a channels-first input: match_causal_conv makes it the canonical conv, which
    gets its state slot, so the build verifies (generation included) and `ad run` equals HF generate."""
    result = _build(tiny_dir("lfm2"))
    ops = {k.split(".", 1)[-1]: v for k, v in result.report["canonical_ops"].items()}
    assert ops.get("torch_cached_causal_conv1d") == 1 and "torch_causal_conv1d" not in ops
    assert all(r["ok"] for r in result.report["verify"]["rows"])
    check_ad_run(tiny_dir("lfm2"), "lfm2", "attn_page_size=4")


def test_uncached_short_convolution_is_refused_at_build_time(tiny_dir):
    """Without the conv matcher LFM2's convolution has no cached form: building must fail, not decode wrongly."""
    result = CliRunner().invoke(app, ["build", f"model={tiny_dir('lfm2')}", "skip_loading_weights=true", *PINNED,
                                      "transforms.match_causal_conv.enabled=false"], terminal_width=300)
    assert result.exit_code != 0
    out = " ".join(result.output.split())
    assert "ad cannot deploy this model correctly: a convolution sliding over the tokens" in out
    assert "in layer 0: model.layers.0.conv" in out
    assert "It needs a canonical causal-conv op with a cached form" in out
    assert "Traceback" not in result.output


def test_unmatched_attention_is_refused_with_the_matcher_reason(tiny_dir):
    """GPT-1 multiplies its scores by a mask buffer (w * b - 1e4 * (1 - b)): not an attention form ad converts."""
    with pytest.raises(ADError) as err:
        _build(tiny_dir("openai-gpt"), verify=False)
    msg = str(err.value)
    assert "attention outside the canonical attention op" in msg and "in layers 0, 1" in msg
    assert "Not matched because: scores come from `mul.Tensor`, not a q @ k^T product" in msg


def test_max_seq_len_beyond_the_position_table_is_a_config_error(tiny_dir):
    def error(family, n):
        with pytest.raises(ADError) as err:
            build(resolve([], [f"model={tiny_dir(family)}", "skip_loading_weights=true", *PINNED, f"max_seq_len={n}"]),
                  stop_after="export_to_gm")
        return str(err.value)

    assert error("gpt2", 300) == (  # n_positions=256
        "The model's learned position table (transformer_wpe_weight) has 256 rows, and position 299 "
        "(max_seq_len=300) would look up row 299: the model takes at most 256 tokens per sequence. Set `max_seq_len` "
        "to that or lower.")
    assert "would look up row 301: the model takes at most 256 tokens" in error("opt", 300)  # OPT adds 2 (258 rows)
    assert error("gpt_neo", 512) == (  # GPT-Neo's mask buffer (max_position_embeddings=256) makes export guard it
        "The model takes at most 256 tokens per sequence (its position table or mask buffer has 256 positions: "
        "max_position_embeddings / n_positions in its config), but max_seq_len is 512. Set `max_seq_len=256` (or "
        "lower).")
