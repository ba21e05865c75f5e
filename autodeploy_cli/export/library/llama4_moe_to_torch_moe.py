"""Export patch: Llama-4's text MoE block runs its routed experts as auto_deploy::torch_moe (routing on the input).

transformers' Llama4TextMoe computes every expert on every token: the router keeps the top-k logits, scatters
them into a [T, E] matrix of -inf, takes the sigmoid (so unselected experts weigh 0), scales each expert's copy of
the input by its weight and runs all E experts with two bmm's over gate_up_proj [E, h, 2I] / down_proj [E, I, h].
That is E / k times the work and an [E * T, h] activation. Under this patch the same router math stays in the
graph (logits, top-k, sigmoid of the kept values) and the experts become one torch_moe(_stacked) with
routing_on_input=True: out[t] = sum_j expert_{ids[t, j]}(w[t, j] * x[t]), which equals HF's sum because an expert
without biases maps a zero input to zero. The shared expert is added as before.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from autodeploy_cli.export.patches import register_export_patch


def _routed_experts(experts: nn.Module, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    from autodeploy_cli.export.library.hf_experts_to_torch_moe import activation_name
    from autodeploy_cli.ops import load_ops

    load_ops()
    gate_up = experts.gate_up_proj.transpose(1, 2)  # [E, h, 2I] -> [E, 2I, h]
    down = experts.down_proj.transpose(1, 2)  # [E, I, h] -> [E, h, I]
    inter = gate_up.shape[1] // 2
    act = activation_name(experts.act_fn) or "silu"
    return torch.ops.auto_deploy.torch_moe_stacked(x, ids, weights, gate_up[:, :inter], down, gate_up[:, inter:],
                                                   act=act, routing_on_input=True)


def llama4_moe_forward(self: nn.Module, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama4TextMoe.forward with the routed experts as one torch_moe (same outputs: (out, router_logits))."""
    hidden_states = hidden_states.reshape(-1, self.hidden_dim)
    router = self.router
    router_logits = torch.nn.functional.linear(hidden_states, router.weight, router.bias)
    top_value, top_index = torch.topk(router_logits, router.top_k, dim=1)
    weights = torch.sigmoid(top_value.float()).to(router_logits.dtype)
    out = self.shared_expert(hidden_states)
    return out + _routed_experts(self.experts, hidden_states, top_index, weights), router_logits


def _supported(module: nn.Module) -> bool:
    from autodeploy_cli.export.library.hf_experts_to_torch_moe import activation_name

    experts = getattr(module, "experts", None)
    return (getattr(experts, "gate_up_proj", None) is not None and getattr(module, "router", None) is not None
            and activation_name(getattr(experts, "act_fn", None)) is not None)


@register_export_patch(
    "llama4_moe_to_torch_moe",
    "Llama-4's dense-over-all-experts MoE block runs its top-k experts as one auto_deploy::torch_moe",
)
@contextlib.contextmanager
def llama4_moe_to_torch_moe(model: nn.Module) -> Iterator[None]:
    try:
        from transformers.models.llama4.modeling_llama4 import Llama4TextMoe
    except ImportError:
        yield
        return
    patched = [m for m in model.modules() if isinstance(m, Llama4TextMoe) and _supported(m)]
    for m in patched:
        m.forward = llama4_moe_forward.__get__(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward
