"""Triton MLA vs the torch_mla reference: cache write, absorbed-weight split-KV decode (both MMA forms, ragged head
blocks and key blocks, one split or many), ragged prefill on expanded K/V (fresh and chunked), and the whole cached
op; tiny sizes through the interpreter on CPU, DeepSeek sizes in bf16 on the GPU (every launch config the benchmark
sweeps, 16 and 128 heads, and a CUDA-graph replay)."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.ops.mla import split_kv_b_proj
from kernels.triton import mla as tm
from kernels.triton import mla_backend as tb
from kernels.triton.mla_decode import DECODE_CONFIGS
from tests.kernels.mla_batch import make_mla_batch, reference, rel_err

MIXED = [(0, 7), (5, 3), (9, 1), (0, 1), (2, 6)]  # (cached prefix, new tokens): prefill, chunked, decode
DECODE = [(0, 1), (6, 1), (13, 1), (30, 1)]


def _slots(b):
    return tm.new_token_slots(b.seq_len, b.input_pos, b.cu_seqlen, b.cache_loc, b.cu_num_pages, b.page_size,
                              b.q_nope.shape[0])


def _cached(b, scale):
    out = tb.triton_mla_with_paged_cache(
        b.q_nope[None], b.q_pe[None], b.ckv[None], b.kpe[None, :, None], b.weight, b.seq_len, b.input_pos,
        b.cu_seqlen, b.cache_loc, b.cu_num_pages, b.kv_len_host, _slots(b), b.ckv_cache, b.kpe_cache, scale)
    return out[0]


def test_cache_write_and_padding(device):
    b = make_mla_batch(MIXED, device=device)
    slots = _slots(b)
    tm.write_mla_cache(b.ckv, b.kpe, b.ckv_cache, b.kpe_cache, slots)
    for i, pos in enumerate(b.input_pos.tolist()):  # every row of every sequence now reads back from its page
        pages, first = b.cache_loc.tolist(), b.cu_num_pages[i].item()
        for p in range(pos + b.seq_len[i].item()):
            page, off = pages[first + p // b.page_size], p % b.page_size
            assert torch.equal(b.ckv_cache[page, off].cpu(), b.ckv_full[i][p])
            assert torch.equal(b.kpe_cache[page, off].cpu(), b.kpe_full[i][p])
    padded = tm.new_token_slots(b.seq_len, b.input_pos, b.cu_seqlen, b.cache_loc, b.cu_num_pages, b.page_size,
                                b.q_nope.shape[0] + 2)
    assert padded.tolist()[-2:] == [-1, -1]


def _decode(b, n, scale, **kw):
    """Write this step's rows, run the absorbed decode kernel, map back to v: -> [B, n, v]."""
    tm.write_mla_cache(b.ckv, b.kpe, b.ckv_cache, b.kpe_cache, _slots(b))
    w_uk, w_uv = split_kv_b_proj(b.weight, n, b.q_nope.shape[-1])
    lat = tm.mla_decode(tm.absorb_q(b.q_nope, w_uk), b.q_pe, b.ckv_cache, b.kpe_cache, b.seq_len, b.input_pos,
                        b.cache_loc, b.cu_num_pages, scale, **kw)
    return tm.unabsorb_out(lat, w_uv)


# kv lengths 1, 7, 14, 31, 45: none a multiple of the page (4) or the key block (16)
DECODE_RAGGED = [(0, 1), (6, 1), (13, 1), (30, 1), (44, 1)]


@pytest.mark.parametrize("n", [3, 20])  # inside one 16-head block; a full block and a ragged one
@pytest.mark.parametrize("swap", [False, True], ids=["rows", "swap"])  # heads on the MMA's M or N side
@pytest.mark.parametrize("splits", [1, 2, 8])  # 1: written without the merge; 8: most splits of short seqs empty
def test_decode_kernel_matches_reference(device, n, swap, splits):
    b = make_mla_batch(DECODE_RAGGED, n=n, device=device, seed=2)
    out = _decode(b, n, 0.3, num_splits=splits, block_h=16, block_n=16, swap=swap)
    assert rel_err(out, reference(b, 0.3)) < 1e-5


@pytest.mark.parametrize("swap", [False, True], ids=["rows", "swap"])
@pytest.mark.parametrize("splits", [1, 4])
def test_decode_padded_sequence_gives_zeros(device, swap, splits):
    b = make_mla_batch([(5, 1), (0, 1), (9, 1)], n=3, device=device, seed=3)
    tm.write_mla_cache(b.ckv, b.kpe, b.ckv_cache, b.kpe_cache, _slots(b))
    seq_len = b.seq_len.clone()
    seq_len[1] = 0  # a CUDA-graph padding slot: no keys at all
    lat = tm.mla_decode(torch.randn(3, 3, 32, device=device), b.q_pe, b.ckv_cache, b.kpe_cache, seq_len,
                        b.input_pos, b.cache_loc, b.cu_num_pages, 0.3, num_splits=splits, block_h=16, block_n=16,
                        swap=swap)
    assert torch.isfinite(lat).all() and not lat[1].any() and lat[0].abs().sum() > 0


def test_decode_launch_policy():
    for n in (16, 128):  # the sweep always times the backend's default
        assert tm.decode_launch(n) in DECODE_CONFIGS
    assert tm.decode_num_splits(64, 1, 8192, 32) == 4  # 16 heads: 256 programs, 2 per SM
    assert tm.decode_num_splits(64, 2, 8192, 64, waves=1) == 1  # 128 heads: 128 programs, no merge pass
    assert tm.decode_num_splits(1, 4, 4096, 64, waves=1) == 16  # capped: each split keeps >= 4 key blocks
    assert tm.decode_num_splits(1, 1, 128, 32) == 1  # short contexts are not split


@pytest.mark.parametrize("seqs", [MIXED, [(0, 9), (0, 3)]], ids=["chunked", "fresh"])
def test_cached_op_prefill_matches_reference(device, seqs):
    b = make_mla_batch(seqs, device=device, seed=4)
    assert rel_err(_cached(b, 0.27), reference(b, 0.27)) < 1e-5


def test_cached_op_decode_matches_reference(device):
    b = make_mla_batch(DECODE, device=device, seed=5)
    assert rel_err(_cached(b, 0.27), reference(b, 0.27)) < 1e-5


def test_cached_op_decode_many_heads_matches_reference(device):
    b = make_mla_batch(DECODE_RAGGED, n=20, device=device, seed=6)  # > 16 heads: one 64-head block, 44 rows masked
    assert tm.decode_launch(20)["block_h"] == 64
    assert rel_err(_cached(b, 0.27), reference(b, 0.27)) < 1e-5


def test_interleaved_rope_on_strided_q_pe_matches_the_canonical_op(device):
    from autodeploy_cli.ops import load_ops

    load_ops()
    g = torch.Generator().manual_seed(6)
    q = torch.randn(2, 5, 3, 16 + 8, generator=g).to(device)[..., 16:]  # the q_pe slice of q: strided
    latent = torch.randn(2, 5, 32 + 8, generator=g).to(device)
    k = latent[..., 32:].view(2, 5, 1, 8)  # k_pe: a view of the latent projection
    freqs = torch.randn(1, 5, 4, generator=g)
    cos, sin = (torch.cat([f, f], -1).to(device) for f in (freqs.cos(), freqs.sin()))
    want = torch.ops.auto_deploy.torch_rope_with_qk_interleaving(q, k, cos, sin, 2)
    got = tm.rope_qk_interleaved(q, k, cos, sin)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------- GPU, real sizes
def _dsv3(seqs, n, seed):
    """DeepSeek-V3 MLA widths (latent 512, RoPE 64, nope/v 128) in bf16, pages of 64."""
    return make_mla_batch(seqs, n=n, nope=128, rope=64, r=512, v=128, page_size=64, dtype=torch.bfloat16,
                          device="cuda", seed=seed)


SCALE = 192 ** -0.5


@pytest.mark.parametrize("n", [16, 128])  # Moonlight / DeepSeek-V3 at TP8, and DeepSeek-V3 on one GPU
@pytest.mark.parametrize("seqs", [[(0, 1), (17, 1), (1000, 1), (255, 1), (4000, 1)],
                                  [(0, 100), (50, 33), (300, 1), (0, 1), (700, 64)],
                                  [(0, 300), (0, 7)]], ids=["decode", "chunked", "fresh"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bf16_matches_reference(seqs, n):
    b = _dsv3(seqs, n, seed=7)
    assert rel_err(_cached(b, SCALE), reference(b, SCALE)) < 2e-2


_REF: dict = {}


def _cfg_id(cfg):
    return f"{'swap' if cfg['swap'] else 'rows'}-h{cfg['block_h']}-n{cfg['block_n']}-w{cfg['num_warps']}-" \
           f"s{cfg['num_stages']}-x{cfg['waves']}"


@pytest.mark.parametrize("cfg", DECODE_CONFIGS, ids=_cfg_id)  # every config the benchmark may pick
@pytest.mark.parametrize("n,splits", [(16, None), (128, None), (128, 1)], ids=["16-auto", "128-auto", "128-one_split"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_decode_configs_match_reference(n, splits, cfg):
    if cfg["block_h"] > n:
        pytest.skip("head block wider than the heads")
    from triton.runtime.errors import OutOfResources

    b = _dsv3([(0, 1), (17, 1), (1000, 1), (255, 1), (4000, 1), (62, 1)], n, seed=9)  # ragged vs 64-row pages
    if n not in _REF:  # the same batch for every config: one reference per head count
        _REF[n] = reference(b, SCALE)
    try:
        out = _decode(b, n, SCALE, num_splits=splits, **cfg)
    except OutOfResources as e:  # a config too big for this GPU's shared memory: the sweep reports it too
        pytest.skip(str(e)[:100])
    assert rel_err(out, _REF[n]) < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("n", [16, 128])
def test_gpu_decode_replays_in_a_cuda_graph(n):
    import dataclasses

    b = _dsv3([(40, 1), (900, 1), (3, 1), (2000, 1)], n, seed=8)
    pristine = (b.ckv_cache.clone(), b.kpe_cache.clone())
    slots, kv_len_host = _slots(b), b.kv_len_host  # no device-to-host copy inside the capture

    def step():
        return tb.triton_mla_with_paged_cache(b.q_nope[None], b.q_pe[None], b.ckv[None], b.kpe[None, :, None],
                                              b.weight, b.seq_len, b.input_pos, b.cu_seqlen, b.cache_loc,
                                              b.cu_num_pages, kv_len_host, slots, b.ckv_cache, b.kpe_cache, SCALE)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm-up: compile the kernels outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    # the next step: new queries and new latent rows in the same buffers, the prefixes as before
    for t in (b.q_nope, b.q_pe, b.ckv, b.kpe):
        t.copy_(torch.randn_like(t))
    b.ckv_cache.copy_(pristine[0])
    b.kpe_cache.copy_(pristine[1])
    graph.replay()
    pos = b.input_pos.tolist()
    new = dataclasses.replace(
        b, ckv_full=[torch.cat([f[:p], b.ckv[i:i + 1].float().cpu()]) for i, (f, p) in enumerate(zip(b.ckv_full, pos))],
        kpe_full=[torch.cat([f[:p], b.kpe[i:i + 1].float().cpu()]) for i, (f, p) in enumerate(zip(b.kpe_full, pos))])
    assert rel_err(out[0], reference(new, SCALE)) < 2e-2
