"""Export patch: HF attention (eager/sdpa/...) routed to auto_deploy::torch_attention through transformers'
attention registry, with a no-op mask builder (causal and window masking happen inside torch_attention)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from autodeploy_cli.export.patches import register_export_patch


AD_ATTN_IMPL = "ad_torch_attention"


def _hf_attention_forward(module: nn.Module, query, key, value, attention_mask, dropout: float = 0.0,
                          scaling=None, sliding_window=None, softcap=None, s_aux=None, **kwargs):
    """A transformers attention function that calls auto_deploy::torch_attention.

    HF passes q/k/v as [b, n, s, d] and expects [b, s, n, d] back (plus attention weights, None here).
    """
    from autodeploy_cli.ops import load_ops

    load_ops()
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


@register_export_patch(
    "hf_attention_to_torch_attention",
    "HF attention (eager/sdpa/...) is routed to auto_deploy::torch_attention via transformers' attention registry",
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
