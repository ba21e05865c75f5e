"""The torch MLA backend (absorbed weights over the compressed pages) vs torch_mla (expanded K/V) per sequence."""

from __future__ import annotations

import pytest
import torch

import kernels.torch.mla  # noqa: F401 - registers the ops
from autodeploy_cli.ops import load_ops
from tests.kernels.mla_batch import make_mla_batch, reference, rel_err

load_ops()
MIXED = [(0, 7), (5, 3), (9, 1), (0, 1), (2, 6)]  # (cached prefix, new tokens): prefill, chunked, decode
DECODE = [(0, 1), (6, 1), (13, 1), (30, 1)]


def _run(b, scale):
    T, B = b.q_nope.shape[0], b.seq_len.shape[0]
    pos = torch.cat([torch.arange(p, p + s) for p, s in zip(b.input_pos.tolist(), b.seq_len.tolist())])
    max_pages = int((b.cu_num_pages[1:] - b.cu_num_pages[:-1]).max())
    pages_per_seq = b.cu_num_pages[1:] - b.cu_num_pages[:-1]
    meta = torch.ops.auto_deploy.torch_attention_prepare_metadata(pos[None], b.seq_len, b.input_pos, b.cu_seqlen,
                                                                  b.cache_loc, b.cu_num_pages, pages_per_seq,
                                                                  b.page_size, max_pages)
    kv_len = b.input_pos + b.seq_len
    info = torch.tensor([B, T, 0, 0, 0, int(b.seq_len.max()), int(kv_len.max())])
    out = torch.ops.auto_deploy.torch_mla_with_paged_cache(
        b.q_nope[None], b.q_pe[None], b.ckv[None], b.kpe[None, :, None], b.weight, b.seq_len, b.input_pos, info,
        *meta, b.ckv_cache, b.kpe_cache, scale)
    return out[0], meta[1]


@pytest.mark.parametrize("seqs", [MIXED, DECODE], ids=["mixed", "decode"])
def test_cached_mla_matches_torch_mla(seqs):
    b = make_mla_batch(seqs, seed=3)
    out, slots = _run(b, 0.21)
    assert rel_err(out, reference(b, 0.21)) < 1e-5
    # this step's latent and RoPE key rows landed in their pages
    torch.testing.assert_close(b.ckv_cache.view(-1, b.ckv.shape[-1])[slots], b.ckv)
    torch.testing.assert_close(b.kpe_cache.view(-1, b.kpe.shape[-1])[slots], b.kpe)
