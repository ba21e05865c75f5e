"""The step message: rank 0's batch (the used part of every sequence-info field) rebuilt on another rank."""

from __future__ import annotations

import torch

from autodeploy_cli.distributed.broadcast import LeaderModel
from autodeploy_cli.ops.batch import FIELDS, SequenceInfo


def _info() -> SequenceInfo:
    return SequenceInfo(max_batch_size=4, max_seq_len=32, max_num_tokens=64, page_size=4)


def test_a_packed_step_rebuilds_the_same_batch():
    sent, got = _info(), _info()
    sent.set_batch([[5, 6, 7, 8, 9], [3], [4]], [0, 6, 2], [[0, 1], [2, 3], [4]], num_prefill=1)
    sent.feed_tokens(torch.tensor([5, 6]), torch.tensor([41, 42]))  # device-side tokens of the previous step
    got.set_batch([[1] * 9], [0], [[7, 8, 9]], num_prefill=1)  # whatever the follower had before
    got.unpack_step(sent.step_counts(), sent.pack_step())
    assert got.step_counts() == sent.step_counts() == [3, 7, 5, 3, 1]
    assert got.token_feed is None  # the feed travels separately (on the device group)
    got.feed_tokens(*sent.token_feed)
    for name in [*FIELDS, "batch_info_host"]:
        assert torch.equal(got.arg(name), sent.arg(name)), name
    assert got.arg("input_ids").tolist() == [[5, 6, 7, 8, 9, 41, 42]]
    # used parts only: 2 int64 token fields + the gather rows, 6 int32 fields per sequence (slot_idx among them), 2 of
    # B+1, the pages, and batch_info_host
    assert sent.pack_step().numel() == 7 * 8 * 2 + 3 * 8 + 4 * (3 * 6 + 2 * 4 + 5) + 7 * 8


def test_the_leader_model_reads_through_to_the_wrapped_model():
    class Runner:
        replays = 3

    assert LeaderModel(Runner(), iface=None).replays == 3
