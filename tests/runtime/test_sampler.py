"""The engine's sampler: the validation messages; a seeded row draws the same token whatever shares its batch, greedy rows stay exact, seeds
wrap to 64 bits, sampled engine steps keep the host/GPU overlap, and host-sampled steps (logprobs) draw the same
tokens as device-sampled ones."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.runtime.sampler import DeviceSampler, as_int64, validate
from autodeploy_cli.runtime.engine import SamplingParams


def test_validate():
    assert validate(SamplingParams()) is None
    assert validate(SamplingParams(temperature=-0.5)) == "temperature must be a finite number >= 0 (0 = greedy), got -0.5"
    assert validate(SamplingParams(temperature=float("nan"))).startswith("temperature must be a finite number")
    assert validate(SamplingParams(top_p=float("nan"))) == "top_p must be in (0, 1], got nan"
    assert validate(SamplingParams(top_p=0.0)) == "top_p must be in (0, 1], got 0.0"
    assert validate(SamplingParams(top_p=1.5)) == "top_p must be in (0, 1], got 1.5"
    assert validate(SamplingParams(top_k=-1)) == "top_k must be >= 0 (0 or null = off), got -1"
    assert validate(SamplingParams(max_tokens=0)) == "max_tokens must be at least 1, got 0"


def test_seeded_rows_do_not_depend_on_the_rest_of_the_batch():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    hot = SamplingParams(temperature=1.2, top_p=0.9)
    s = DeviceSampler(torch.device("cpu"), 4)
    alone = [int(s.sample(logits[1:2], [hot], [7], [c])[0]) for c in range(40)]
    params = [SamplingParams(), hot, SamplingParams(temperature=0.7, top_k=3)]
    mixed = [s.sample(logits, params, [1, 7, 2], [9, c, 4]) for c in range(40)]
    assert [int(m[1]) for m in mixed] == alone and len(set(alone)) > 3  # different counters: different draws
    assert all(int(m[0]) == int(logits[0].argmax()) for m in mixed)
    assert {int(m[2]) for m in mixed} == {int(mixed[0][2])}  # same seed and counter: same token
    assert int(mixed[0][2]) in logits[2].topk(3).indices.tolist()


def test_seeds_wrap_to_int64_bits():
    assert as_int64(5) == 5 and as_int64(-1) == -1
    assert as_int64((1 << 64) - 1) == -1 and as_int64(1 << 63) == -(1 << 63) and as_int64(3 + (1 << 64)) == 3


def _engine(*overrides):
    from autodeploy_cli.config.loader import resolve
    from autodeploy_cli.llm import build_engine

    return build_engine(resolve([], ["max_seq_len=64", "max_batch_size=2", *overrides]))


def test_sampled_engine_steps_overlap_like_greedy_ones():
    engine = _engine()
    sp = SamplingParams(max_tokens=6, temperature=0.9, top_k=50, seed=11, ignore_eos=True)
    engine.add_request([5, 6, 7, 8], sp)
    first = engine.step()  # the prefill launches the first token; the host has not read it yet
    assert first == [] and engine._tokens.inflight is not None
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    tokens = [o.new_token_ids[0] for o in outs]
    # seeded: the same tokens on a second run, beside another request, and when sampled on the host for logprobs
    again, _ = engine.generate([[5, 6, 7, 8], [9, 9, 2]], [sp, SamplingParams(max_tokens=3, temperature=1.0)])
    host = engine.generate([[5, 6, 7, 8]], SamplingParams(**{**sp.__dict__, "logprobs": 0}))[0]
    assert len(tokens) == 6 and tokens == again.token_ids == host.token_ids
    other_seed = engine.generate([[5, 6, 7, 8]], SamplingParams(**{**sp.__dict__, "seed": 12}))[0]
    assert other_seed.token_ids != tokens


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_engine_samples_with_the_kernel_reproducibly():
    engine = _engine("device=cuda", "max_batch_size=4", "cuda_graph_batch_sizes=[1,4]")
    assert engine._sampler._op is torch.ops.auto_deploy.triton_sample_tokens
    sp = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.9, seed=3, ignore_eos=True)
    alone = engine.generate([[5, 6, 7, 8]], sp)[0].token_ids
    crowd = engine.generate([[5, 6, 7, 8], [1, 2], [9] * 9], [sp, SamplingParams(max_tokens=5, temperature=1.0),
                                                               SamplingParams(max_tokens=7)])
    host = engine.generate([[5, 6, 7, 8]], SamplingParams(**{**sp.__dict__, "logprobs": 1}))[0]
    assert len(alone) == 12 and alone == crowd[0].token_ids == host.token_ids
