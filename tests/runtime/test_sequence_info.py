"""SequenceInfo: every field of the flattened batch, preallocated once, sized to the batch per step."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.ops.batch import BATCH_INFO_KEYS, FIELDS, SequenceInfo


def test_fields_of_a_mixed_batch():
    info = SequenceInfo(max_batch_size=4, max_seq_len=32, max_num_tokens=64, page_size=4)
    # two prefill chunks (one after a cached prefix) then a decode
    info.set_batch([[11, 12, 13, 14, 15], [21, 22], [31]], input_pos=[0, 6, 9], pages=[[3, 0], [5, 1], [2, 7, 4]],
                   num_prefill=2)
    arg = info.arg
    assert arg("input_ids").tolist() == [[11, 12, 13, 14, 15, 21, 22, 31]]
    assert arg("position_ids").tolist() == [[0, 1, 2, 3, 4, 6, 7, 9]]
    assert arg("seq_len").tolist() == [5, 2, 1]
    assert arg("input_pos").tolist() == [0, 6, 9]
    assert arg("cu_seqlen").tolist() == [0, 5, 7, 8]
    assert arg("seq_len_with_cache").tolist() == [5, 8, 10]
    assert arg("pages_per_seq").tolist() == [2, 2, 3]
    assert arg("cu_num_pages").tolist() == [0, 2, 4, 7]
    assert arg("cache_loc").tolist() == [3, 0, 5, 1, 2, 7, 4]
    assert arg("last_page_len").tolist() == [1, 4, 2]
    assert arg("logits_gather_idx").tolist() == [4, 6, 7]  # last token of each sequence
    assert dict(zip(BATCH_INFO_KEYS, arg("batch_info_host").tolist())) == dict(
        num_seqs=3, num_tokens=8, num_prefill=2, num_prefill_tokens=7, num_decode=1, max_q_len=5, max_kv_len=10)
    assert arg("cu_seqlen_host").tolist() == [0, 5, 7, 8] and arg("cu_seqlen_host").device.type == "cpu"
    assert arg("seq_len").dtype == torch.int32 and arg("input_ids").dtype == torch.int64


def test_buffers_are_preallocated_views_reused_every_step():
    info = SequenceInfo(max_batch_size=2, max_seq_len=8, max_num_tokens=8, page_size=4)
    info.set_batch([[1, 2, 3]], [0], [[0]], num_prefill=1, gather="all")
    first = info.arg("input_ids").data_ptr()
    assert info.arg("logits_gather_idx").tolist() == [0, 1, 2]
    info.set_batch([[4], [5]], [3, 0], [[0], [1]], num_prefill=1)
    assert info.arg("input_ids").data_ptr() == first  # same memory, new size
    assert info.arg("input_ids").tolist() == [[4, 5]]
    assert info.arg("position_ids").tolist() == [[3, 0]]
    # every field lives in one byte buffer: one host->device copy moves them all
    ptrs = {info.arg(n).untyped_storage().data_ptr() for n in FIELDS}
    assert len(ptrs) == 1


def test_limits_are_enforced():
    info = SequenceInfo(max_batch_size=2, max_seq_len=8, max_num_tokens=4, page_size=4)
    with pytest.raises(ValueError):
        info.set_batch([[1, 2, 3, 4, 5]], [0], [[0, 1]], num_prefill=1)  # 5 tokens > max_num_tokens
    with pytest.raises(ValueError):
        info.set_batch([[1], [2], [3]], [0, 0, 0], [[0], [1], [2]], num_prefill=3)  # 3 sequences > max_batch_size
