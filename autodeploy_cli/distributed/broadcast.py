"""Rank 0 drives, the other ranks follow: every build and every forward of rank 0 is announced over the CPU group,
so all ranks run the same graph on the same batch, step by step (SPMD).

Messages (rank 0 -> all), each a fixed-size int64 header on the CPU group, then its payload:
    BUILD  a pickled build request (the config and build flags); the followers build the same model
    STEP   the step's batch: the used part of the sequence info (`SequenceInfo.pack_step`) on the CPU group, then
           the device-side token feed of overlapped greedy steps (tokens rank 0 sampled on its GPU, which no host
           has read yet) on the device group, so the feed never waits for the host
    STOP   the run is over

Rank 0 sends STEP from `LeaderModel`, the callable the runtime's Engine is handed; the followers run `serve`.
"""

from __future__ import annotations

import gc
import pickle
from typing import Any, Callable, Optional

import torch

from autodeploy_cli.distributed import groups

OP_STOP, OP_BUILD, OP_STEP = 0, 1, 2
HEADER = 8  # [op, n_bytes, feed_k, num_seqs, num_tokens, num_pages_used, num_gather, num_prefill]
# a build request -> (model, cache interface) on this rank
Builder = Callable[[dict], tuple[Any, Any]]


def _bcast(t: torch.Tensor, group: Any = None) -> None:
    import torch.distributed as dist

    dist.broadcast(t, src=0, group=group)


def _send_header(op: int, n_bytes: int = 0, feed_k: int = 0, counts: Optional[list[int]] = None) -> None:
    header = torch.tensor([op, n_bytes, feed_k, *(counts or [0] * 5)], dtype=torch.int64)
    _bcast(header, groups.state().cpu_group)


def _recv_header() -> list[int]:
    header = torch.zeros(HEADER, dtype=torch.int64)
    _bcast(header, groups.state().cpu_group)
    return header.tolist()


def send_build(request: dict) -> None:
    """Rank 0, before it builds: the other ranks build the same (config, flags)."""
    data = torch.frombuffer(bytearray(pickle.dumps(request)), dtype=torch.uint8)
    _send_header(OP_BUILD, data.numel())
    _bcast(data, groups.state().cpu_group)


def send_stop() -> None:
    _send_header(OP_STOP)


def send_step(info: Any) -> None:
    """Rank 0, right before a forward: the batch `info` holds now, and its device-side token feed."""
    payload = info.pack_step()
    feed = info.token_feed
    k = 0 if feed is None else int(feed[0].numel())
    _send_header(OP_STEP, payload.numel(), k, info.step_counts())
    _bcast(payload, groups.state().cpu_group)
    if k:
        _bcast(torch.cat([feed[0].to(torch.int64), feed[1].to(torch.int64)]))


def _recv_step(info: Any, header: list[int]) -> None:
    _, n_bytes, k, *counts = header
    payload = torch.empty(n_bytes, dtype=torch.uint8)
    _bcast(payload, groups.state().cpu_group)
    info.unpack_step(counts, payload)
    if k:
        fed = torch.empty(2 * k, dtype=torch.int64, device=info.device)
        _bcast(fed)
        info.feed_tokens(fed[:k], fed[k:])


class LeaderModel:
    """Rank 0's model for the runtime: each call first sends the step to the other ranks, then runs the model.
    Attributes of the wrapped model (e.g. a CUDA-graph runner's counters) read through."""

    def __init__(self, model: Any, iface: Any):
        self.model = model
        self.iface = iface

    def __call__(self, *args: Any) -> Any:
        send_step(self.iface.info)
        return self.model(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["model"], name)


def serve(build: Builder) -> None:
    """A follower's life: build what rank 0 builds, run every step rank 0 runs, until STOP."""
    current: Optional[tuple[Any, Any]] = None
    while True:
        header = _recv_header()
        op = header[0]
        if op == OP_STOP:
            return
        if op == OP_BUILD:
            data = torch.empty(header[1], dtype=torch.uint8)
            _bcast(data, groups.state().cpu_group)
            current = None  # free the previous model before building the next
            gc.collect()
            current = build(pickle.loads(data.numpy().tobytes()))
        elif op == OP_STEP:
            if current is None or current[1] is None:
                raise RuntimeError("rank 0 sent a step before building a model with a KV cache")
            model, iface = current
            _recv_step(iface.info, header)
            with torch.no_grad():
                iface.forward(model)
        else:
            raise RuntimeError(f"unknown message {op} from rank 0")
