"""Export patch: Llama-4's attention temperature tuning (NoPE layers) reads the graph's position_ids.

transformers' Llama4TextAttention scales the queries of its NoPE layers by
`log1p(floor((pos + 1) / floor_scale)) * attn_scale + 1`, with pos = arange(seq) + the HF cache's length. Exported
without HF's cache that is arange(seq): a batch of sequences would share positions and a decode step would see
position 0 (`require_cached_forms` refuses it). Those layers apply neither RoPE nor the q/k L2 norm, so the same
scale can multiply q_proj's output per token; under this patch it is computed from the decoder layer's
position_ids [b, s] and the attention's own tuning is off: the same numbers, from the real positions.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator

import torch
from torch import nn

from autodeploy_cli.export.patches import register_export_patch


def _tuned_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__ == "Llama4TextDecoderLayer"
            and getattr(m.self_attn, "attn_temperature_tuning", False) and not m.self_attn.use_rope]


def _layer_forward(layer: nn.Module, original: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    attn, positions = layer.self_attn, kwargs.get("position_ids")
    if positions is None:
        raise RuntimeError("llama4_temperature_from_positions: the decoder layer got no position_ids")
    scale = torch.log1p(torch.floor((positions.float() + 1.0) / attn.floor_scale)) * attn.attn_scale + 1.0
    attn._ad_query_scale = scale[..., None]  # [b, s, 1]: one factor per token, over all heads
    try:
        return original(hidden_states, *args, **kwargs)
    finally:
        attn._ad_query_scale = None


def _scaled_q_proj(attn: nn.Module, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    q = nn.functional.linear(x, linear.weight, linear.bias)
    return (q * attn._ad_query_scale).to(q.dtype)


@register_export_patch(
    "llama4_temperature_from_positions",
    "Llama-4's NoPE-layer query temperature is computed from position_ids, not from arange(seq)",
    applies=lambda model: bool(_tuned_layers(model)),
)
@contextlib.contextmanager
def llama4_temperature_from_positions(model: nn.Module) -> Iterator[None]:
    layers = _tuned_layers(model)
    for layer in layers:
        attn = layer.self_attn
        layer.forward = functools.partial(_layer_forward, layer, layer.forward)
        attn.q_proj.forward = functools.partial(_scaled_q_proj, attn, attn.q_proj)
        attn.attn_temperature_tuning = False
    try:
        yield
    finally:
        for layer in layers:
            attn = layer.self_attn
            del layer.forward, attn.q_proj.forward
            attn.attn_temperature_tuning = True
            attn.__dict__.pop("_ad_query_scale", None)
