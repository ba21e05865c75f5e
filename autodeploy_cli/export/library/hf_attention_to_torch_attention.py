"""Export patch: HF attention (eager/sdpa/...) routed to auto_deploy::torch_attention through transformers'
attention registry, with a no-op mask builder (causal and window masking happen inside torch_attention).

Only for models whose attention goes through that registry: older ones (Bloom, MPT, Falcon, GPT-Neo, XGLM, ...)
compute attention in their own code and would read the no-op mask as "no mask" (non-causal attention). A dry run
on the meta device (no compute) counts the calls; a model that never calls the registered function is exported
without this patch, and the pattern matchers turn its attention into canonical ops.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import nn

from autodeploy_cli.export.patches import register_export_patch


AD_ATTN_IMPL = "ad_torch_attention"
_CALLS = [0]  # calls of _hf_attention_forward (the dry run counts them)
_STOP_AT_FIRST_CALL = [False]  # set during the dry run: one call answers it, the other layers need not run


class _FirstCall(Exception):
    """Ends the dry run at the first attention call (a full fake forward of an 8B model takes ~2 s)."""


def _hf_attention_forward(module: nn.Module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling=None, sliding_window=None, softcap=None, s_aux=None, **kwargs):
    """A transformers attention function that calls auto_deploy::torch_attention.

    HF passes q/k/v as [b, n, s, d] and expects [b, s, n, d] back (plus attention weights, None here).
    """
    from autodeploy_cli.ops import load_ops

    load_ops()
    _CALLS[0] += 1
    if _STOP_AT_FIRST_CALL[0]:
        raise _FirstCall()
    out = torch.ops.auto_deploy.torch_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
        attn_mask=attention_mask,
        dropout_p=0.0,
        is_causal=bool(getattr(module, "is_causal", True)),
        scale=scaling,
        sinks=s_aux,
        sliding_window=sliding_window,
        logit_cap=softcap,
        layout="bsnd",
    )
    return out, None


def _no_mask(*args, **kwargs):
    """Mask builder for our attention: causal and sliding-window masking happen inside torch_attention."""
    return None


def _all_configs(model: nn.Module) -> list:
    configs = []
    for module in model.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and all(cfg is not c for c in configs):
            configs.append(cfg)
            for sub in getattr(cfg, "sub_configs", {}) or {}:
                sub_cfg = getattr(cfg, sub, None)
                if sub_cfg is not None and all(sub_cfg is not c for c in configs):
                    configs.append(sub_cfg)
    return configs


@contextlib.contextmanager
def _quiet_fake_tensor_log() -> Iterator[None]:
    """torch logs a traceback for an op its meta kernel refuses (e.g. _grouped_mm in float32); the dry run reports
    the error itself, so keep that log off the user's terminal."""
    import logging

    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _dry_run(model: nn.Module, patched: bool) -> Optional[str]:
    """Run two tokens through the model with fake tensors (as export sees them; HF skips its value checks for
    fake tensors); the error text if it fails."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    device = next(iter(model.parameters())).device
    patch = hf_attention_to_torch_attention(model) if patched else contextlib.nullcontext()
    _STOP_AT_FIRST_CALL[0] = patched
    try:
        with _quiet_fake_tensor_log(), patch, torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            ids = torch.ones(1, 2, dtype=torch.long, device=device)
            model(input_ids=ids, position_ids=torch.arange(2, device=device)[None], use_cache=False)
    except _FirstCall:
        return None
    except Exception as e:  # noqa: BLE001 - reported to the caller
        return f"{type(e).__name__}: {e}"
    finally:
        _STOP_AT_FIRST_CALL[0] = False
    return None


def routes_through_interface(model: nn.Module) -> bool:
    """True if the model's forward calls transformers' registered attention function (a meta-device dry run of two
    tokens, no compute). False if it never does: it runs through, or fails on the no-op mask (a None where its own
    attention code expects a tensor), or fails with the patch but runs without it. A model that cannot dry-run at
    all keeps the patch."""
    from autodeploy_cli.log import get_logger

    if next(iter(model.parameters()), None) is None:
        return True
    before = _CALLS[0]
    error = _dry_run(model, patched=True)
    if _CALLS[0] > before:
        return True
    # the no-op mask (None) reached the model's own attention code before any call of ours
    mask_consumed = error is not None and "NoneType" in error
    if error is not None and not mask_consumed and _dry_run(model, patched=False) is not None:
        get_logger().debug(f"attention-interface dry run failed either way ({error}); patch kept")
        return True
    get_logger().info(f"{type(model).__name__} computes attention outside transformers' attention interface: "
                      "export patch hf_attention_to_torch_attention not applied (the matchers take over)")
    return False


@register_export_patch(
    "hf_attention_to_torch_attention",
    "HF attention (eager/sdpa/...) is routed to auto_deploy::torch_attention via transformers' attention registry",
    applies=lambda model: routes_through_interface(model),
)
@contextlib.contextmanager
def hf_attention_to_torch_attention(model: nn.Module) -> Iterator[None]:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(AD_ATTN_IMPL, _hf_attention_forward)
    AttentionMaskInterface.register(AD_ATTN_IMPL, _no_mask)
    configs = _all_configs(model)
    saved = [cfg._attn_implementation for cfg in configs]
    try:
        for cfg in configs:
            cfg._attn_implementation = AD_ATTN_IMPL
        yield
    finally:
        for cfg, impl in zip(configs, saved):
            cfg._attn_implementation = impl
