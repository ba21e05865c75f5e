"""FlashInfer MLA (planned once per step) vs the torch_mla reference on the GPU, DeepSeek-V3 widths in bf16:
decode and chunked prefill through BatchMLAPagedAttentionWrapper (absorbed weights), fresh prompts through the
ragged prefill on expanded K/V, and the CUDA-graph decode wrapper re-planned before a replay."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.mla_batch import make_mla_batch, reference, rel_err

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
SCALE = 192 ** -0.5


def _batch(seqs, n=16, seed=7):
    return make_mla_batch(seqs, n=n, nope=128, rope=64, r=512, v=128, page_size=64, dtype=torch.bfloat16,
                          device="cuda", seed=seed)


def _layer(b, slots, kv_len_host):
    from kernels.flashinfer import mla_backend as fb

    return fb.flashinfer_mla_with_paged_cache(
        b.q_nope[None], b.q_pe[None], b.ckv[None], b.kpe[None, :, None], b.weight, b.seq_len, b.input_pos,
        b.cu_seqlen, b.cache_loc, b.cu_num_pages, kv_len_host, slots, b.ckv_cache, b.kpe_cache, SCALE)[0]


def _run(seqs, n=16):
    from kernels.flashinfer import mla as fm
    from kernels.flashinfer import mla_backend as fb

    b = _batch(seqs, n)
    slots = fb.flashinfer_mla_prepare_metadata(
        torch.zeros(1, b.q_nope.shape[0], dtype=torch.long, device="cuda"), b.seq_len, b.input_pos, b.cu_seqlen,
        b.cache_loc, b.cu_num_pages, b.cu_seqlen.cpu(), b.cu_num_pages.cpu(), b.kv_len_host, 64)
    out, out2 = _layer(b, slots, b.kv_len_host), _layer(b, slots, b.kv_len_host)  # two layers share the plan
    assert len(fm.used_keys()) == 1 and torch.equal(out, out2)
    return rel_err(out, reference(b, SCALE)), fm.used_keys()[0][0]


@pytest.mark.parametrize("n", [16, 128])
def test_decode(n):
    err, kind = _run([(0, 1), (17, 1), (1000, 1), (255, 1), (4000, 1)], n)
    assert kind == "paged" and err < 2e-2


def test_chunked_prefill_and_mixed():
    err, kind = _run([(0, 100), (50, 33), (300, 1), (0, 1), (700, 64)])
    assert kind == "paged" and err < 2e-2


def test_fresh_prompts_use_ragged_prefill():
    err, kind = _run([(0, 300), (0, 7), (0, 1)])
    assert kind == "ragged" and err < 2e-2


def test_cuda_graph_decode_replans_before_replay():
    import dataclasses

    from autodeploy_cli.ops import graph_hooks
    from kernels.flashinfer import mla_backend as fb

    b = _batch([(40, 1), (900, 1), (3, 1), (2000, 1)], seed=8)
    pristine = (b.ckv_cache.clone(), b.kpe_cache.clone())
    pos_ids = torch.zeros(1, 4, dtype=torch.long, device="cuda")
    host = dict(cu_seqlen_host=b.cu_seqlen.cpu(), cu_num_pages_host=b.cu_num_pages.cpu(),
                seq_len_with_cache_host=b.kv_len_host, cache_loc=b.cache_loc)

    def step():
        slots = fb.flashinfer_mla_prepare_metadata(pos_ids, b.seq_len, b.input_pos, b.cu_seqlen, b.cache_loc,
                                                   b.cu_num_pages, host["cu_seqlen_host"], host["cu_num_pages_host"],
                                                   host["seq_len_with_cache_host"], 64)
        return _layer(b, slots, host["seq_len_with_cache_host"])  # host tensors: nothing copied in the capture

    graph_hooks.set_capture_batch(4)
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            step()  # warm-up plans the fixed-buffer wrapper of batch 4
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step()
    finally:
        graph_hooks.set_capture_batch(None)
    for t in (b.q_nope, b.q_pe, b.ckv, b.kpe):  # the next step: new queries and rows, prefixes as before
        t.copy_(torch.randn_like(t))
    b.ckv_cache.copy_(pristine[0])
    b.kpe_cache.copy_(pristine[1])
    graph_hooks.run_pre_replay_hooks(4, host)
    graph.replay()
    pos = b.input_pos.tolist()
    new = dataclasses.replace(
        b, ckv_full=[torch.cat([f[:p], b.ckv[i:i + 1].float().cpu()]) for i, (f, p) in enumerate(zip(b.ckv_full, pos))],
        kpe_full=[torch.cat([f[:p], b.kpe[i:i + 1].float().cpu()]) for i, (f, p) in enumerate(zip(b.kpe_full, pos))])
    assert rel_err(out, reference(new, SCALE)) < 2e-2
