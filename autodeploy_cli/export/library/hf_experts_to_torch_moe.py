"""Export patch: transformers' stacked experts, in every layout it stores them, run as auto_deploy::torch_moe.

transformers runs each experts module decorated with `use_experts_implementation` through its experts registry
(`config._experts_implementation`: eager, batched_mm, grouped_mm, ...). This patch registers one more entry,
`ad_torch_moe`, and selects it on every config while exporting: the experts' forward becomes a single torch_moe
call whose weight lists are per-expert views of the stacked parameters, read from the module's layout flags
(is_transposed; gate|up concatenated, or interleaved as in gpt-oss; biases; gated or not) and its activation.
No HF experts path is traced, so nothing depends on grouped_mm's alignment rules (dims not multiple of 8 export and
run) or on data-dependent shapes; the router and shared experts stay as HF wrote them. `match_moe_pattern` then
turns it into torch_moe over per-expert parameters.

Experts the op cannot express (a post-expert norm, a custom `_apply_gate` other than gpt-oss's, an activation not
in ops.moe.ACTIVATIONS) keep HF's batched_mm path, which `match_moe_pattern` may still recognise.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
from torch import nn

from autodeploy_cli.export.patches import register_export_patch

AD_EXPERTS_IMPL = "ad_torch_moe"
FALLBACK_IMPL = "batched_mm"


def activation_name(act_fn: Any) -> Optional[str]:
    """ops.moe activation name of a transformers activation module (ACT2FN entry), None if unknown."""
    from transformers import activations as A

    table = [("SiLUActivation", "silu"), ("GELUActivation", "gelu"), ("NewGELUActivation", "gelu_tanh"),
             ("FastGELUActivation", "gelu_tanh"), ("GELUTanh", "gelu_tanh"), ("PytorchGELUTanh", "gelu_tanh"),
             ("ReLUSquaredActivation", "relu2")]
    for cls_name, name in table:
        cls = getattr(A, cls_name, None)
        if cls is not None and type(act_fn) is cls:
            return name
    if isinstance(act_fn, nn.SiLU):
        return "silu"
    if type(act_fn) is nn.ReLU:
        return "relu"
    if type(act_fn) is nn.GELU:
        return "gelu_tanh" if act_fn.approximate == "tanh" else "gelu"
    return None


def experts_layout(module: nn.Module) -> Optional[dict[str, Any]]:
    """How a `use_experts_implementation` module's weights and activation map onto torch_moe, None if they don't."""
    from transformers.integrations import moe as hf_moe

    if getattr(module, "has_post_expert_norm", False):
        return None
    gated = getattr(module, "has_gate", True)
    gate_fn = getattr(type(module), "_apply_gate", None)
    default_gate = getattr(hf_moe, "_default_apply_gate", None)
    stacked = getattr(module, "gate_up_proj" if gated else "up_proj", None)
    down = getattr(module, "down_proj", None)
    if not isinstance(stacked, torch.Tensor) or not isinstance(down, torch.Tensor) or stacked.dim() != 3:
        return None
    layout = {"gated": gated, "transposed": bool(getattr(module, "is_transposed", False)),
              "bias": bool(getattr(module, "has_bias", False)), "interleaved": False, "alpha": 1.702, "limit": 7.0}
    if gated and gate_fn is not default_gate:
        if not (hasattr(module, "alpha") and hasattr(module, "limit")):
            return None  # a custom gate we cannot name
        layout.update(act="swiglu_oai", interleaved=True, alpha=float(module.alpha), limit=float(module.limit))
        return layout
    layout["act"] = activation_name(getattr(module, "act_fn", None))
    return layout if layout["act"] is not None else None


def _split(t: torch.Tensor, layout: dict, gated: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(gate or only input projection, up or None) of a stacked [E, rows, ...] tensor."""
    if not gated:
        return t, None
    if layout["interleaved"]:
        return t[:, 0::2], t[:, 1::2]
    half = t.shape[1] // 2
    return t[:, :half], t[:, half:]


def moe_forward(module: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
    """The `ad_torch_moe` experts implementation: hidden [T, h], ids / weights [T, k] -> [T, h]."""
    layout = experts_layout(module)
    if layout is None:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

        return ALL_EXPERTS_FUNCTIONS[FALLBACK_IMPL](module, hidden_states, top_k_index, top_k_weights)
    from autodeploy_cli.ops import load_ops

    load_ops()
    gated = layout["gated"]
    up = module.gate_up_proj if gated else module.up_proj
    down = module.down_proj
    if layout["transposed"]:  # [E, h, rows] -> [E, rows, h]
        up, down = up.transpose(1, 2), down.transpose(1, 2)
    w1, w3 = _split(up, layout, gated)
    biases: dict[str, Optional[torch.Tensor]] = {"w1_bias": None, "w2_bias": None, "w3_bias": None}
    if layout["bias"]:
        b1, b3 = _split(module.gate_up_proj_bias if gated else module.up_proj_bias, layout, gated)
        biases = {"w1_bias": b1, "w2_bias": module.down_proj_bias, "w3_bias": b3}
    return torch.ops.auto_deploy.torch_moe_stacked(
        hidden_states, top_k_index, top_k_weights, w1, down, w3, **biases, act=layout["act"], alpha=layout["alpha"],
        limit=layout["limit"])


def _configs(model: nn.Module) -> list:
    from autodeploy_cli.export.library.hf_attention_to_torch_attention import _all_configs

    return _all_configs(model)


@register_export_patch(
    "hf_experts_to_torch_moe",
    "transformers' stacked experts (every layout) export as one auto_deploy::torch_moe via its experts registry",
)
@contextlib.contextmanager
def hf_experts_to_torch_moe(model: nn.Module) -> Iterator[None]:
    try:
        from transformers.integrations.moe import ExpertsInterface
    except ImportError:  # a transformers without the experts registry: nothing to route
        yield
        return
    ExpertsInterface.register(AD_EXPERTS_IMPL, moe_forward)
    configs = [c for c in _configs(model) if hasattr(c, "_experts_implementation_internal")]
    saved = [c._experts_implementation_internal for c in configs]
    try:
        for cfg in configs:
            cfg._experts_implementation_internal = AD_EXPERTS_IMPL
        yield
    finally:
        for cfg, impl in zip(configs, saved):
            cfg._experts_implementation_internal = impl
