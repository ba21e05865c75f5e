"""Prefill CUDA graphs (graph/cudagraph.py): which graphs get buckets, and that a padded prefill replay gives the
eager model's logits and tokens. On the CPU the "graph" is the model run eagerly over the padded static buffers
(the same inputs a replay reads), with the triton attention backend under Triton's interpreter."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before kernels.triton is imported anywhere in this process
    os.environ.setdefault("TRITON_INTERPRET", "1")

from autodeploy_cli.config.loader import resolve  # noqa: E402
from autodeploy_cli.graph.cudagraph import CudaGraphModel, default_prefill_tokens, prefill_buckets  # noqa: E402
from autodeploy_cli.llm import build_engine  # noqa: E402
from autodeploy_cli.runtime.engine import SamplingParams  # noqa: E402

PROMPTS = [[5, 9, 200, 31, 7, 77, 12], [42, 3], [100 + i for i in range(13)]]
CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="Triton's CPU interpreter is off on a GPU machine; "
                              "test_gpu_prefill_graphs_give_eager_tokens covers it there")


class EagerReplay(CudaGraphModel):
    """Captures nothing; a replay runs the model over the padded static inputs (what the graph would read)."""

    def _capture_one(self, args, stream, bs):
        return None, None

    def _replay(self, entry, args):
        return self.model(*args)


def _engine(model_dir, *over):
    cfg = resolve([], ["skip_loading_weights=true", "max_seq_len=64", "max_batch_size=4", "attn_page_size=4",
                       "device=cpu", "dtype=float32", *over], model=str(model_dir))
    return build_engine(cfg)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from tests.tiny_models import write_tiny_model_dir

    return write_tiny_model_dir(tmp_path_factory.mktemp("pg_llama"), "llama")


def test_default_prefill_tokens_ladder():
    assert default_prefill_tokens(300) == [16, 32, 48, 64, 96, 128, 192, 256]
    assert default_prefill_tokens(2048)[-3:] == [1024, 1536, 2048]


def test_host_metadata_means_no_prefill_graphs(llama_dir):
    engine = _engine(llama_dir, "attn_backend=torch")
    buckets, why = prefill_buckets(engine.iface, None, 4)
    assert buckets == [] and why.startswith("no prefill CUDA graphs: the graph reads host metadata (")
    assert "batch_info_host" in why


@CPU_ONLY
def test_triton_graph_gets_buckets_within_the_limits(llama_dir):
    engine = _engine(llama_dir, "attn_backend=triton")
    buckets, why = prefill_buckets(engine.iface, None, 4)
    assert why == "" and (1, 16) in buckets and (4, 64) in buckets
    assert all(b < t <= 64 and b <= 4 for b, t in buckets)  # max_seq_len 64, max_batch_size 4
    assert prefill_buckets(engine.iface, [8, 40], 2)[0] == [(1, 8), (2, 8), (1, 40), (2, 40)]


@CPU_ONLY
def test_padded_prefill_replay_gives_the_eager_logits_and_tokens(llama_dir):
    ref_engine = _engine(llama_dir, "attn_backend=triton")
    ref = [c.token_ids for c in ref_engine.generate(PROMPTS, SamplingParams(max_tokens=6, ignore_eos=True))]

    engine = _engine(llama_dir, "attn_backend=triton")
    iface = engine.iface
    ids = torch.tensor([PROMPTS[2]])
    eager = iface.run_prefill(engine.model, ids, gather="last")
    buckets, _ = prefill_buckets(iface, [16, 32], 4)
    runner = EagerReplay(engine.model, iface, [], buckets)
    runner.capture()
    padded = iface.run_prefill(runner, ids, gather="last")  # 13 tokens of 1 sequence -> bucket (1, 16)
    assert runner.prefill_replays == 1 and runner.eager_calls == 0
    torch.testing.assert_close(padded, eager, rtol=1e-5, atol=1e-5)
    iface.run_prefill(runner, ids, gather="all")  # every row's logits: not what a bucket returns, so eager
    assert runner.eager_calls == 1

    engine.model = runner
    got = [c.token_ids for c in engine.generate(PROMPTS, SamplingParams(max_tokens=6, ignore_eos=True))]
    assert got == ref
    assert runner.prefill_replays == 2  # the 3 prompts (22 tokens) in one step -> bucket (4, 32)


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU_OVER = ["device=cuda", "attn_backend=triton", "compile_backend=torch-cudagraph"]


@pytest.mark.gpu
@GPU
def test_gpu_prefill_graphs_give_eager_tokens(llama_dir):
    ref = _engine(llama_dir, *GPU_OVER, "transforms.compile_model.cuda_graph_prefill_tokens=[]")
    engine = _engine(llama_dir, *GPU_OVER)
    assert engine.model.prefill_graphs and "prefill graphs for <= 4 sequences" in \
        engine.build_result.report["transforms"][-1]["note"]
    assert not ref.model.prefill_graphs
    prompts = [*PROMPTS, [7] * 40, list(range(3, 60))]
    sp = SamplingParams(max_tokens=6, ignore_eos=True)
    want = [c.token_ids for c in ref.generate(prompts, sp)]
    assert [c.token_ids for c in engine.generate(prompts, sp)] == want
    assert engine.model.prefill_replays > 0 and ref.model.prefill_replays == 0
    alone = [engine.generate([p], sp)[0].token_ids for p in prompts]  # one prompt per step: (1, bucket) graphs
    assert alone == want


@pytest.mark.gpu
@GPU
def test_gpu_bf16_prefill_graph_logits_match_eager(llama_dir):
    """bf16: the padded GEMMs may take other cuBLAS kernels (another M), so logits, not tokens, are compared."""
    engine = _engine(llama_dir, *GPU_OVER, "dtype=bfloat16")
    runner = engine.model
    for n in (13, 40, 57):
        ids = torch.randint(3, 250, (1, n), generator=torch.Generator().manual_seed(n)).cuda()
        eager = engine.iface.run_prefill(runner.model, ids, gather="last").float()
        before = runner.prefill_replays
        graph = engine.iface.run_prefill(runner, ids, gather="last").float()
        assert runner.prefill_replays == before + 1
        assert ((graph - eager).norm() / eager.norm()).item() < 1e-2
