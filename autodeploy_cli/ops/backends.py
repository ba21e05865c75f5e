"""The one backend table: for every op family, which implementations exist, where they live, and what `auto` means.

Names are the config's choices (`config.schema.BACKEND_CHOICES`); this table adds where each implementation's module
is (imported by path on first use, so transforms never import a kernel module and `kernels.triton` is never
imported on a CPU machine) and the one `auto` rule: GPU kernels on CUDA, the torch reference elsewhere.
Importing this module imports no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from autodeploy_cli.config.schema import BACKEND_CHOICES
from autodeploy_cli.errors import ADError, did_you_mean

# family -> backend name -> module that registers its ops (or its attention descriptor) on import
MODULES: dict[str, dict[str, str]] = {
    "attention": {"torch": "kernels.torch.attention", "triton": "kernels.triton.backend",
                  "flashinfer": "kernels.flashinfer.backend"},
    "fused": {"torch": "autodeploy_cli.ops.fused", "triton": "kernels.triton.fused_ops"},
    "mla": {"torch": "kernels.torch.mla", "triton": "kernels.triton.mla_backend",
            "flashinfer": "kernels.flashinfer.mla_backend"},
    "ssm": {"torch": "kernels.torch.ssm", "triton": "kernels.triton.ssm_backend"},
    "causal_conv": {"torch": "kernels.torch.causal_conv", "triton": "kernels.triton.causal_conv_backend"},
    "delta_rule": {"torch": "kernels.torch.delta_rule", "triton": "kernels.triton.delta_rule_backend"},
    "moe": {"torch": "autodeploy_cli.ops.moe_fused", "triton": "kernels.triton.moe"},
    "compile": {},  # compile backends are wrappers in transforms/compile_model.py, not op modules
    "quant": {"torch": "autodeploy_cli.ops.quant", "triton": "kernels.triton.fp8_ops"},
    "sampling": {"torch": "autodeploy_cli.ops.sampling", "triton": "kernels.triton.sampling"},
}
# family -> (backend on CUDA, backend elsewhere) for `auto`
AUTO: dict[str, tuple[str, str]] = {
    "attention": ("triton", "torch"),
    "fused": ("triton", "torch"),
    "mla": ("triton", "torch"),
    "moe": ("triton", "torch"),
    "compile": ("torch-cudagraph", "torch-simple"),
    "quant": ("triton", "torch"),
    "ssm": ("triton", "torch"),
    "causal_conv": ("triton", "torch"),
    "delta_rule": ("triton", "torch"),
    "sampling": ("triton", "torch"),
}
# the config key a user sets for each family (named in errors)
CONFIG_KEY = {"attention": "attn_backend", "fused": "transforms.<fusion>.backend", "compile": "compile_backend",
              "mla": "mla_backend", "quant": "transforms.fuse_fp8_linear.backend",
              "ssm": "transforms.insert_cached_ssm_attention.backend",
              "causal_conv": "transforms.insert_cached_causal_conv.backend",
              "delta_rule": "transforms.insert_cached_delta_rule.backend",
              "moe": "transforms.fuse_moe.backend", "sampling": "(the model's device)"}


def resolve(family: str, name: str, device_type: str) -> str:
    """`auto` -> the family's backend for `device_type` ("cuda" / "cpu"); any other name is checked and returned."""
    if name == "auto":
        on_gpu, elsewhere = AUTO[family]
        return on_gpu if device_type == "cuda" else elsewhere
    choices = [c for c in BACKEND_CHOICES[family] if c != "auto"]
    if name not in choices:
        raise ADError(f"Unknown {family} backend `{name}` ({CONFIG_KEY[family]}).{did_you_mean(name, choices)} "
                      f"Available: auto, {', '.join(choices)}.")
    return name


def load(family: str, name: str) -> None:
    """Import the module of backend `name` of `family` (it registers its ops); a clear error when it cannot load."""
    module = MODULES[family].get(name)
    if module is None:
        return
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise ADError(
            f"The `{name}` {family} backend could not be loaded ({module}: {e}). It needs a CUDA GPU and the `gpu` "
            f"extra (`pip install -e \".[gpu]\"`); on a CPU-only machine use the torch backend "
            f"(`{CONFIG_KEY[family]}=torch`)."
        ) from None


# fused-op key -> backend -> op name in the auto_deploy namespace (what the post_load_fusion transforms insert)
FUSED_OPS: dict[str, dict[str, str]] = {
    "rmsnorm": {"triton": "triton_rmsnorm"},
    "rmsnorm_gated": {"triton": "triton_rmsnorm_gated"},
    "fused_add_rmsnorm": {"torch": "torch_fused_add_rmsnorm", "triton": "triton_fused_add_rmsnorm"},
    "silu_and_mul": {"torch": "torch_silu_and_mul", "triton": "triton_silu_and_mul"},
    "rope_with_explicit_cos_sin": {"triton": "triton_rope_with_explicit_cos_sin"},
    "rope_with_qk_interleaving": {"triton": "triton_rope_with_qk_interleaving"},
    "linear": {"triton": "triton_linear"},
    "silu_mul_linear": {"torch": "torch_silu_mul_linear", "triton": "triton_silu_mul_linear"},
    "rmsnorm_linear": {"torch": "torch_rmsnorm_linear", "triton": "triton_rmsnorm_linear"},
    "add_rmsnorm_linear": {"torch": "torch_add_rmsnorm_linear", "triton": "triton_add_rmsnorm_linear"},
}


def fused_op(backend: str, key: str) -> Any:
    """The OpOverload of fused op `key` for `backend` (e.g. ("triton", "rmsnorm") -> auto_deploy::triton_rmsnorm)."""
    import torch

    from autodeploy_cli.ops import load_ops

    load_ops()
    load("fused", backend)
    return getattr(torch.ops.auto_deploy, FUSED_OPS[key][backend]).default


# FP8 linear key -> backend -> op name (what fuse_fp8_linear inserts; torch keeps the canonical reference ops)
QUANT_OPS: dict[str, dict[str, str]] = {
    "fp8_linear": {"torch": "torch_quant_fp8_linear", "triton": "triton_quant_fp8_linear"},
    "fp8_block_linear": {"torch": "torch_quant_fp8_block_linear", "triton": "triton_quant_fp8_block_linear"},
    "fp8_silu_mul_linear": {"triton": "triton_quant_fp8_silu_mul_linear"},
    "fp8_rmsnorm_linear": {"triton": "triton_quant_fp8_rmsnorm_linear"},
    "fp8_add_rmsnorm_linear": {"triton": "triton_quant_fp8_add_rmsnorm_linear"},
}


def quant_op(backend: str, key: str) -> Any:
    """The OpOverload of FP8 linear op `key` for `backend` (e.g. ("triton", "fp8_linear"))."""
    import torch

    from autodeploy_cli.ops import load_ops

    load_ops()
    load("quant", backend)
    return getattr(torch.ops.auto_deploy, QUANT_OPS[key][backend]).default


# MoE backend -> its fused-MoE op (what fuse_moe inserts; one contract: autodeploy_cli/ops/moe_fused.py)
MOE_OPS: dict[str, str] = {"torch": "torch_moe_fused", "triton": "triton_moe_fused"}


def moe_op(backend: str) -> Any:
    """The OpOverload of the fused MoE op of `backend` (e.g. "triton" -> auto_deploy::triton_moe_fused)."""
    import torch

    from autodeploy_cli.ops import load_ops

    load_ops()
    load("moe", backend)
    return getattr(torch.ops.auto_deploy, MOE_OPS[backend]).default