"""Canonical ops (`torch.ops.auto_deploy.*`): the contract between transforms and kernels.

Each op has a plain-torch reference implementation and a fake (meta) implementation. `load_ops()` registers them
all; transforms and kernels call it before touching `torch.ops.auto_deploy`.
"""

from __future__ import annotations

import importlib

OP_MODULES = ("attention", "repeat_kv", "rope", "rmsnorm", "moe", "moe_fused", "linear", "fused", "mla", "quant",
              "ssm", "causal_conv", "delta_rule", "rmsnorm_gated", "dist")


def load_ops() -> None:
    """Import every op module once (registration happens on import of the op module itself)."""
    for name in OP_MODULES:
        importlib.import_module(f"autodeploy_cli.ops.{name}")
