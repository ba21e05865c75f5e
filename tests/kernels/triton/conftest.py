"""Triton kernel tests run on the GPU when there is one, else on the CPU through Triton's interpreter.

TRITON_INTERPRET must be set before any @triton.jit function is defined, i.e. before kernels.triton is imported.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
