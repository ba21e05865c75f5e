"""The FlashInfer MLA backend's own logic on CPU, against a torch stand-in of the two FlashInfer wrappers
(fake_flashinfer.py, the documented plan/run contract): one plan per step shared by the layers, the ragged
wrapper on expanded K/V for fresh prompts, the paged MLA wrapper on absorbed weights otherwise, CUDA-graph
wrappers with fixed buffers re-planned by the pre-replay hook. bf16 on CPU (the cache write runs through Triton's
interpreter)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from autodeploy_cli.ops import graph_hooks  # noqa: E402
from tests.kernels.flashinfer import fake_flashinfer  # noqa: E402
from tests.kernels.mla_batch import make_mla_batch, reference, rel_err  # noqa: E402

SCALE = 192 ** -0.5


@pytest.fixture
def fi(monkeypatch):
    from kernels.flashinfer import mla as fm

    monkeypatch.setitem(sys.modules, "flashinfer", fake_flashinfer.module())
    monkeypatch.setattr(fm, "PLANNER", fm._Planner())
    monkeypatch.setattr(fm, "CAPTURED_KEYS", {})
    fake_flashinfer.PLANS.clear()
    yield fm
    graph_hooks.set_capture_batch(None)


def _batch(seqs, seed=3):  # FlashInfer's widths (latent 512, RoPE 64), small otherwise
    return make_mla_batch(seqs, n=2, nope=16, rope=64, r=512, v=16, page_size=4, dtype=torch.bfloat16, seed=seed)


def _host(b):
    return dict(cu_seqlen_host=b.cu_seqlen.clone(), cu_num_pages_host=b.cu_num_pages.clone(),
                seq_len_with_cache_host=b.kv_len_host, cache_loc=b.cache_loc)


def _step(b, host, layers=2):
    from kernels.flashinfer import mla_backend as fb

    T = b.q_nope.shape[0]
    slots = fb.flashinfer_mla_prepare_metadata(torch.zeros(1, T, dtype=torch.long), b.seq_len, b.input_pos,
                                               b.cu_seqlen, b.cache_loc, b.cu_num_pages, host["cu_seqlen_host"],
                                               host["cu_num_pages_host"], host["seq_len_with_cache_host"], 4)
    outs = [fb.flashinfer_mla_with_paged_cache(
        b.q_nope[None], b.q_pe[None], b.ckv[None], b.kpe[None, :, None], b.weight, b.seq_len, b.input_pos,
        b.cu_seqlen, b.cache_loc, b.cu_num_pages, host["seq_len_with_cache_host"], slots, b.ckv_cache, b.kpe_cache,
        SCALE)[0] for _ in range(layers)]
    return outs[-1]


def test_fresh_prompts_plan_the_ragged_wrapper_once(fi):
    b = _batch([(0, 9), (0, 3), (0, 1)])
    out = _step(b, _host(b))
    assert [k for k, _, _ in fake_flashinfer.PLANS] == ["ragged"]  # two layers, one plan
    p = fake_flashinfer.PLANS[0][2]
    assert (p["heads"], p["dqk"], p["dvo"], p["causal"]) == (2, 16 + 64, 16, True)
    assert p["qo"].tolist() == p["kv"].tolist() == [0, 9, 12, 13]
    assert rel_err(out, reference(b, SCALE)) < 2e-2


def test_chunked_prefill_and_decode_plan_the_paged_wrapper_on_absorbed_weights(fi):
    b = _batch([(0, 7), (5, 3), (9, 1), (2, 6)])
    out = _step(b, _host(b))
    assert [k for k, _, _ in fake_flashinfer.PLANS] == ["paged"]
    _, w, p = fake_flashinfer.PLANS[0]
    assert (p["heads"], p["ckv"], p["kpe"], p["page"], p["causal"], p["scale"]) == (2, 512, 64, 4, True, SCALE)
    qo, kvp, idx, kv_len = w.arrays
    assert qo.tolist() == b.cu_seqlen.tolist() and kvp.tolist() == b.cu_num_pages.tolist()
    assert kv_len.tolist() == (b.input_pos + b.seq_len).tolist() and idx.tolist() == b.cache_loc.tolist()
    assert rel_err(out, reference(b, SCALE)) < 2e-2


def test_graph_wrapper_is_replanned_before_a_replay(fi):
    b = _batch([(3, 1), (10, 1), (0, 1), (6, 1)])
    host = _host(b)
    graph_hooks.set_capture_batch(4)  # a capture's warm-up: the fixed-buffer wrapper of batch 4 is planned
    _step(b, host)
    graph_hooks.set_capture_batch(None)
    (kind, graph_w, _), = fake_flashinfer.PLANS
    assert kind == "paged" and graph_w.graph and fi.CAPTURED_KEYS[4]
    # the next decode step: one more token each, a new page list; the pre-replay hook plans it into the buffers
    b2 = _batch([(4, 1), (11, 1), (1, 1), (7, 1)], seed=3)
    b2.cache_loc = b.cache_loc.clone()  # same pages (all fit), prefixes as before plus the first step's rows
    host2 = _host(b2)
    graph_hooks.run_pre_replay_hooks(4, host2)
    assert [w for _, w, _ in fake_flashinfer.PLANS] == [graph_w, graph_w]
    assert graph_w.bufs[3].tolist() == [5, 12, 2, 8]  # kv lengths of the new step, in the captured buffer
    assert graph_w.bufs[1].tolist() == b2.cu_num_pages.tolist()
