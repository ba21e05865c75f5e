"""Shared setup for the post_load_fusion transform tests: a loaded tiny Llama graph (float32, CPU) and a runner."""

from __future__ import annotations

import copy
import os

import torch

if not torch.cuda.is_available():  # Triton kernels run through the interpreter on CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

from autodeploy_cli.config.loader import resolve  # noqa: E402
from autodeploy_cli.pipeline.build import build  # noqa: E402
from autodeploy_cli.graph.core import canonicalize, count_ops  # noqa: E402
from autodeploy_cli.pipeline.registry import build_options, get_transform_class  # noqa: E402

_CACHE: dict = {}


def loaded(tiny_dir, family: str = "llama"):
    """(gm, ctx) right after load_weights (a fresh deep copy per call)."""
    if family not in _CACHE:
        cfg = resolve([], [f"model={tiny_dir(family)}", "skip_loading_weights=true", "dtype=float32", "device=cpu"])
        result = build(cfg, stop_after="load_weights")
        _CACHE[family] = (result.model, result.ctx)
    gm, ctx = _CACHE[family]
    return copy.deepcopy(gm), ctx


def apply(name: str, gm, ctx, **opts):
    """Run one transform as the runner would (apply, then dead-code elimination + recompile)."""
    t = get_transform_class(name)(build_options(name, {"stage": "post_load_fusion", **opts}))
    ctx.model = gm
    info = t.apply(gm, ctx)
    canonicalize(gm)
    return info


def logits(gm, seq: int = 5, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seq)
    ids = torch.randint(0, 300, (batch, seq), generator=g)
    pos = torch.arange(seq).expand(batch, seq)
    with torch.no_grad():
        return gm(ids, pos)


def assert_same_function(before, after) -> None:
    for seq, batch in ((5, 2), (9, 1)):  # a second input shape too
        torch.testing.assert_close(logits(after, seq, batch), logits(before, seq, batch), rtol=1e-5, atol=1e-5)


def ops(gm, op) -> int:
    return count_ops(gm, op)
