"""Export patch for transformers' grouped_mm experts: `torch.histc` of integer expert ids.

`grouped_mm_experts_forward` counts tokens per expert with `torch.histc`, on float ids on CPU and on int ids
elsewhere. Export runs on the meta device, so the graph records the int branch, which has no CPU kernel
("histogram_cpu not implemented for 'Int'"): the exported graph could not run on CPU (e.g. `ad build --verify`
right after export). Under this patch histc counts integer ids as floats (exact for ids < 2**24) and returns the
input's dtype, so the graph runs on every device. `match_moe_pattern` later replaces the whole block anyway.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from autodeploy_cli.export.patches import register_export_patch


@register_export_patch("moe_histc_float", "torch.histc counts integer MoE expert ids as floats (CPU has no int kernel)")
@contextlib.contextmanager
def moe_histc_float(model: nn.Module) -> Iterator[None]:
    original = torch.histc

    def histc(input: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if input.is_floating_point():
            return original(input, *args, **kwargs)
        return original(input.float(), *args, **kwargs).to(input.dtype)

    torch.histc = histc  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.histc = original  # type: ignore[assignment]
