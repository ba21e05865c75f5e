"""Export patch for dynamic NTK RoPE (`rope_type: dynamic`, e.g. InternLM3).

HF recomputes the frequencies inside forward when `max(position_ids) + 1` exceeds `max_position_embeddings`: a
data-dependent branch torch.export cannot capture. Below that length the frequencies are the base ones, which is
what the module holds after init, so the export keeps them: exact for sequences up to `max_position_embeddings`
(keep `max_seq_len` at or below it; the registry's layers do).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

from autodeploy_cli.export.patches import register_export_patch


@register_export_patch("dynamic_rope_static",
                       "dynamic NTK RoPE keeps its base frequencies (exact up to max_position_embeddings tokens)")
@contextlib.contextmanager
def dynamic_rope_static(model: nn.Module) -> Iterator[None]:
    saved: list[tuple[nn.Module, object]] = []
    for module in model.modules():
        rope_type = getattr(module, "rope_type", None)
        if isinstance(rope_type, str) and "dynamic" in rope_type:
            saved.append((module, rope_type))
            module.rope_type = "default"
        elif isinstance(rope_type, dict) and any("dynamic" in str(v) for v in rope_type.values()):
            saved.append((module, rope_type))
            module.rope_type = {k: ("default" if "dynamic" in str(v) else v) for k, v in rope_type.items()}
    try:
        yield
    finally:
        for module, rope_type in saved:
            module.rope_type = rope_type
