"""Programmatic dependent launch (PDL) for our Triton kernels on Hopper and newer.

A kernel launched with PDL may start while the kernel in front of it drains: its programs become resident, do
what does not depend on that kernel (a GEMV loads its first weight tile), then wait at `griddepcontrol.wait`,
which returns once the previous grid has finished and its writes are visible. Every kernel that takes `PDL`
waits before it reads or writes anything another kernel touches, so enabling it never changes results; it only
hides the launch gap and ramp between the ~300 small kernels of a batch-1 decode step. AD_TRITON_PDL=0 turns it
off (for A/B timing); the interpreter and pre-Hopper GPUs never use it.
"""

from __future__ import annotations

import functools
import os

import torch
import triton


@functools.lru_cache(maxsize=None)
def enabled(device_index: int) -> bool:
    if os.environ.get("TRITON_INTERPRET") == "1" or os.environ.get("AD_TRITON_PDL", "1") == "0":
        return False
    version = tuple(int(p) for p in triton.__version__.split(".")[:2])
    return version >= (3, 4) and torch.cuda.get_device_capability(device_index)[0] >= 9


def launch_kwargs(t: torch.Tensor) -> dict:
    """Extra kernel-launch keywords for a kernel with a `PDL: tl.constexpr` parameter, on t's device."""
    if not t.is_cuda or not enabled(t.device.index if t.device.index is not None else torch.cuda.current_device()):
        return {}
    return {"PDL": True, "launch_pdl": True}
