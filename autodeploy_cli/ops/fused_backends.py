"""Which implementation a fusion transform inserts: `torch` (reference ops, any device) or `triton` (GPU kernels).

Transforms never import kernel modules: they ask `fused_op(backend, name)`, which imports the backend's op module
by path on first use. "auto" means triton on a CUDA device and torch elsewhere.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from autodeploy_cli.errors import ADError

FUSED_MODULES = {"torch": "autodeploy_cli.ops.fused", "triton": "kernels.triton.fused_ops"}
BACKENDS = ("auto", "torch", "triton")


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    return backend


def fused_op(backend: str, name: str) -> Any:
    """The OpOverload `auto_deploy::<backend>_<name>` (e.g. triton_rmsnorm), its module imported on demand."""
    from autodeploy_cli.ops import load_ops

    load_ops()
    try:
        importlib.import_module(FUSED_MODULES[backend])
    except ImportError as e:
        raise ADError(f"The `{backend}` fused kernels could not be loaded ({e}). They need a CUDA GPU and Triton; "
                      "set the transform's `backend: torch` on a CPU-only machine.") from None
    return getattr(torch.ops.auto_deploy, f"{backend}_{name}").default
