"""SlotManager (per-sequence state slots) and the scratch slot padded CUDA-graph rows write."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from autodeploy_cli.ops.batch import SequenceInfo
from autodeploy_cli.runtime.slots import SlotManager


def test_lowest_free_slot_first_and_reuse():
    slots = SlotManager(3)
    assert [slots.allocate() for _ in range(3)] == [0, 1, 2] and slots.num_free == 0
    with pytest.raises(RuntimeError, match="all 3 state slots are in use"):
        slots.allocate()
    slots.release(1)
    assert slots.allocate() == 1
    slots.release(2)
    with pytest.raises(RuntimeError, match="state slot 2 released twice"):
        slots.release(2)


def test_batch_carries_slots_and_padded_graph_rows_get_the_scratch_slot():
    from autodeploy_cli.graph.cudagraph import CudaGraphModel

    info = SequenceInfo(max_batch_size=4, max_seq_len=16, max_num_tokens=16, page_size=4)
    info.set_batch([[5], [6]], [3, 7], [[0], [1, 2]], num_prefill=0, slots=[2, 0])
    assert info.arg("slot_idx").tolist() == [2, 0]
    runner = CudaGraphModel(lambda *a: None, SimpleNamespace(info=info, input_names=[], caches={}, buffers={}), [4])
    runner._pad(2, 4)
    assert info._np["slot_idx"][:4].tolist() == [2, 0, 4, 4]  # rows 2, 3 repeat sequence 0 but own slot 4
    info.set_batch([[1, 2, 3]], [0], [[0]], num_prefill=1)
    assert info.arg("slot_idx").tolist() == [0]  # default: slot b


def test_cuda_graph_inputs_include_the_state_slots():
    import torch

    from autodeploy_cli.graph.cudagraph import CudaGraphModel
    from autodeploy_cli.ops.cache import CacheConfig, CachedSequenceInterface, StateSpec

    info = SequenceInfo(max_batch_size=4, max_seq_len=16, max_num_tokens=16, page_size=4)
    iface = CachedSequenceInterface(info, CacheConfig(torch.float32, 4, 16, 4, 16))
    iface.add_input("slot_idx")
    iface.add_state("ssm_state_0", StateSpec((2, 3, 5), torch.float32))
    iface.allocate(4)
    assert iface.states["ssm_state_0"].shape == (5, 2, 3, 5)  # max_batch_size + the scratch slot
    info.set_batch([[1], [2]], [1, 1], [[0], [1]], num_prefill=0, slots=[3, 1])
    args, named = CudaGraphModel(lambda *a: None, iface, [2])._static_args(2)
    assert named["ssm_state_0"] is iface.states["ssm_state_0"] and named["slot_idx"].tolist() == [3, 1]
    assert [a.data_ptr() for a in args] == [named[n].data_ptr() for n in iface.input_names]
