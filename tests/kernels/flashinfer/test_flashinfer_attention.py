"""FlashInfer paged attention (planned once per step) vs the torch reference, on the GPU."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.triton.paged import make_batch, reference

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _rel(a, b):
    return ((a.float().cpu() - b.float().cpu()).norm() / b.float().norm()).item()


def _run(seqs, decode, **kw):
    from kernels.flashinfer import attention as fa
    from kernels.triton import attention as ta

    b = make_batch(seqs, n_heads=32, n_kv=8, d=128, page_size=16, dtype=torch.bfloat16, device="cuda", seed=7)
    slots = ta.slot_mapping(b.seq_len, b.input_pos, b.cu_seqlen, b.cache_loc, b.cu_num_pages, 16, b.q.shape[0])
    ta.write_kv_cache(b.k, b.v, b.k_cache, b.v_cache, slots)
    kv_len = (b.input_pos + b.seq_len).cpu()
    meta = fa.step_meta_from_host(b.cu_seqlen.cpu(), b.cu_num_pages.cpu(), (kv_len - 1) % 16 + 1, b.cache_loc,
                                  is_decode=decode)
    fa.plan_step(meta)
    out = fa.attention(b.q, b.k_cache, b.v_cache, 128 ** -0.5, kw.get("sliding_window"), kw.get("logit_cap"))
    out2 = fa.attention(b.q, b.k_cache, b.v_cache, 128 ** -0.5, kw.get("sliding_window"), kw.get("logit_cap"))
    assert len(fa.used_keys()) == 1  # the second layer reused the step's plan
    assert torch.equal(out, out2)
    return _rel(out, reference(b, **kw))


@pytest.mark.parametrize("kw", [{}, {"sliding_window": 40}])  # each variant is a FlashInfer JIT build (~1 min)
def test_flashinfer_prefill_mixed(kw):
    assert _run([(0, 100), (50, 33), (300, 1)], decode=False, **kw) < 2e-2


@pytest.mark.parametrize("kw", [{}, {"sliding_window": 40}])
def test_flashinfer_decode(kw):
    assert _run([(0, 1), (17, 1), (1000, 1), (255, 1)], decode=True, **kw) < 2e-2
