"""Export patch: torch.autocast inside the model becomes a no-op (it would export as a wrapper op)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from autodeploy_cli.export.patches import register_export_patch


@register_export_patch("autocast_noop", "torch.autocast inside the model becomes a no-op (it exports as a wrapper op)")
@contextlib.contextmanager
def autocast_noop(model: nn.Module) -> Iterator[None]:
    original = torch.autocast

    class _NoAutocast(contextlib.nullcontext):
        def __init__(self, *args, **kwargs):
            super().__init__()

        def __call__(self, fn):  # used as a decorator
            return fn

    torch.autocast = _NoAutocast  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        torch.autocast = original  # type: ignore[misc]
