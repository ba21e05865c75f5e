"""Canonical-op coverage: how many of each block the model config implies vs how many the graph holds."""

from __future__ import annotations

from typing import Any

from torch import fx


def coverage_rows(gm: fx.GraphModule | None, hf_config: Any, state: dict) -> list[dict]:
    """Rows {kind, found, expected, hint}; empty until canonical ops exist in the pipeline."""
    return []
