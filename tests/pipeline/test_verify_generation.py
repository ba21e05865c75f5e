"""`ad build --verify`'s generation check catches what the prefill probe cannot: a decode step that ignores the
cached context, a corrupted fp8 KV cache, and (GPU) a CUDA-graph replay that goes wrong."""

from __future__ import annotations

import types
from typing import Optional

import pytest
import torch

from autodeploy_cli.commands.conformance import check_entry
from autodeploy_cli.config.loader import resolve
from autodeploy_cli.ops import load_ops
from autodeploy_cli.pipeline.build import build


@torch.library.custom_op("auto_deploy::test_attention_forgets_cache", mutates_args=("k_cache", "v_cache"))
def forgetful_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_len: torch.Tensor,
                        input_pos: torch.Tensor, batch_info_host: torch.Tensor, page_table: torch.Tensor,
                        slots: torch.Tensor, tok_seq: torch.Tensor, tok_pos: torch.Tensor, k_cache: torch.Tensor,
                        v_cache: torch.Tensor, scale: Optional[float] = None, sinks: Optional[torch.Tensor] = None,
                        sliding_window: Optional[int] = None, logit_cap: Optional[float] = None) -> torch.Tensor:
    """The torch backend, except that a step after a cached context attends to this step's tokens only."""
    args = (q, k, v, seq_len, input_pos, batch_info_host, page_table, slots, tok_seq, tok_pos)
    consts = (scale, sinks, sliding_window, logit_cap)
    out = torch.ops.auto_deploy.torch_attention_with_paged_cache(*args, k_cache, v_cache, *consts)
    if int(input_pos.max()) == 0:
        return out
    return torch.ops.auto_deploy.torch_attention_with_paged_cache(
        *args, torch.zeros_like(k_cache), torch.zeros_like(v_cache), *consts)


@forgetful_attention.register_fake
def _forgetful_fake(q, k, v, *rest, **kwargs):
    return q.new_empty(*q.shape[:-1], v.shape[-1])


def _cfg(tiny_dir, *extra):
    return resolve([], [f"model={tiny_dir('llama')}", "skip_loading_weights=true", "attn_page_size=4",
                        "max_seq_len=64", *extra])


def test_decode_only_fault_fails_verify_naming_insert_cached_attention(tiny_dir, monkeypatch):
    load_ops()
    from kernels.torch.attention import TorchPagedAttention

    op = torch.ops.auto_deploy.test_attention_forgets_cache.default
    monkeypatch.setattr(TorchPagedAttention, "cached_op", classmethod(lambda cls: op))
    result = build(_cfg(tiny_dir), verify=True)
    rows = [r for r in result.report["verify"]["rows"] if r["transform"] == "insert_cached_attention"]
    assert [(r["check"], r["ok"]) for r in rows] == [("logits", True), ("generation", False)]  # prefill is fine
    assert result.verify_failure == "insert_cached_attention"


def test_generation_check_passes_and_runs_mixed_and_single_sequence_steps(tiny_dir):
    result = build(_cfg(tiny_dir, "enable_chunked_prefill=true", "max_num_tokens=16"), verify=True)
    gen = [r for r in result.report["verify"]["rows"] if r["check"] == "generation"]
    assert [r["transform"] for r in gen] == ["insert_cached_attention", "gather_logits_before_lm_head",
                                             "initialize_cache", "compile_model"]
    assert all(r["ok"] and r["token_mismatches"] == 0 and r["max_rel_err"] < 1e-4 for r in gen)
    # prompts of 7, 2 and 9 tokens (pages of 4) join at steps 0, 1, 2 in chunks of 5; the first decodes 6 tokens:
    # 2 prefill steps + 5 decode steps, the last one alone
    assert gen[0]["steps"] == 7
    na = [r["transform"] for r in result.report["verify"]["rows"] if r["check"] == "n/a"]
    assert "fuse_gemms" in na and "resize_kv_cache" in na


def test_fp8_kv_cache_passes_with_its_tolerance_and_fails_when_corrupted(tiny_dir, monkeypatch):
    result = build(_cfg(tiny_dir, "kv_cache_config.dtype=fp8"), verify=True)
    rows = [r for r in result.report["verify"]["rows"] if r["transform"] == "insert_cached_attention"]
    assert result.verify_failure is None and {r["tolerance_reason"] for r in rows} == {"fp8 KV cache"}
    assert all(1e-4 < r["max_rel_err"] <= 0.1 for r in rows)  # really quantized, within the fp8 bound

    import kernels.torch.attention as ta

    original = ta._write_slots
    monkeypatch.setattr(ta, "_write_slots", lambda cache, slots, x: original(cache, slots, x * 1.5))
    assert build(_cfg(tiny_dir, "kv_cache_config.dtype=fp8"), verify=True).verify_failure == \
        "insert_cached_attention"


def test_sweep_fails_an_entry_whose_rmsnorm_count_is_short(monkeypatch):
    from autodeploy_cli.models.factory import ModelFactory
    from tests.e2e.test_conformance import _broken_rmsnorm

    assert check_entry("Qwen/Qwen3-0.6B").status == "pass"
    original = ModelFactory._from_config

    def from_config(self):
        model = original(self)
        norm = model.model.layers[0].input_layernorm
        norm.forward = types.MethodType(_broken_rmsnorm, norm)
        return model

    monkeypatch.setattr(ModelFactory, "_from_config", from_config)
    r = check_entry("Qwen/Qwen3-0.6B")
    assert r.status == "fail" and r.error.startswith("canonical-op coverage short of what the HF config implies: "
                                                     "rmsnorm 8/9 (not matched in layer 0 (3/4)")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_replay_fault_fails_verify_naming_compile_model(tiny_dir, monkeypatch):
    from autodeploy_cli.graph.cudagraph import CudaGraphModel

    original = CudaGraphModel.__call__

    def wrong_replay(self, *args):
        out = original(self, *args)
        return out.roll(1, dims=-1) if self.replays else out  # only replayed (decode) steps are off

    monkeypatch.setattr(CudaGraphModel, "__call__", wrong_replay)
    result = build(_cfg(tiny_dir, "device=cuda", "compile_backend=torch-cudagraph", "attn_backend=triton"),
                   verify=True)
    assert result.verify_failure == "compile_model"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_only_fusions_are_verified_on_the_gpu(tiny_dir, dtype):
    """The fusions that never apply on CPU (GEMM fusion, Triton norms/RoPE/SiLU, optimize_linear's GEMV) change the
    graph on a GPU and each passes its row; the generation check runs through the CUDA graphs after compile."""
    result = build(_cfg(tiny_dir, "device=cuda", f"dtype={dtype}"), verify=True)
    rows = {(r["transform"], r["check"]): r for r in result.report["verify"]["rows"]}
    for name in ("fuse_gemms", "fuse_silu_mul", "fuse_add_rmsnorm", "fuse_rmsnorm", "optimize_rope",
                 "optimize_linear"):
        assert rows[(name, "logits")]["ok"], (name, rows.get((name, "logits")))
    assert rows[("compile_model", "generation")]["ok"] and result.verify_failure is None
