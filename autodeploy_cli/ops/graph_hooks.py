"""Host-side hooks around CUDA-graph capture and replay (the contract between compile backends and kernels).

A captured graph replays device work only: anything a kernel library does on the host (FlashInfer's `plan`) must
happen before each replay. Backends register a pre-replay hook; the CUDA-graph runner calls every hook with the
graph's batch size and the padded graph inputs by name, right before `replay()`. `capture_batch` is the batch size
of the graph being captured or replayed (None when running eagerly).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

PreReplayHook = Callable[[int, dict[str, torch.Tensor]], None]

_hooks: dict[str, PreReplayHook] = {}
capture_batch: Optional[int] = None


def register_pre_replay_hook(name: str, fn: PreReplayHook) -> None:
    _hooks[name] = fn


def run_pre_replay_hooks(batch: int, named_args: dict[str, torch.Tensor]) -> None:
    for fn in _hooks.values():
        fn(batch, named_args)


def set_capture_batch(batch: Optional[int]) -> None:
    global capture_batch
    capture_batch = batch
