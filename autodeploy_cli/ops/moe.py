"""auto_deploy::torch_moe: a mixture-of-experts block after its router (the router and shared experts stay outside).

Producers: `match_moe_pattern`, from transformers' batched_mm / grouped_mm graphs (export patches off) and from
`auto_deploy::torch_moe_stacked`, the same op over stacked weight tensors that the `hf_experts_to_torch_moe` /
`llama4_moe_to_torch_moe` export patches emit (every layout transformers stores experts in); either way the
per-expert weights become graph parameters. `fuse_moe` later stacks them into the
fused op family (`ops/moe_fused.py`, kernels/triton/moe.py).

Expert function (per expert e, on a token row h):
    gated:      a = act(h @ w1[e]^T + b1[e], h @ w3[e]^T + b3[e])        (w1 = gate, w3 = up)
    non-gated:  a = act(h @ w1[e]^T + b1[e])                             (w3_weight == [])
    expert_e(h) = a @ w2[e]^T + b2[e]
Activations (`act`, ACTIVATIONS): silu, gelu, gelu_tanh, relu, relu2 (relu squared); gated forms multiply by up;
swiglu_oai is gpt-oss's clamped SwiGLU: g = min(gate, limit), u = clamp(up, -limit, limit),
a = (u + 1) * g * sigmoid(alpha * g).
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu", "relu2", "swiglu_oai")
GATED_ONLY = ("swiglu_oai",)


def activation(act: str, gate: torch.Tensor, up: Optional[torch.Tensor], alpha: float = 1.702,
               limit: float = 7.0) -> torch.Tensor:
    """The expert activation on the gate projection (times the up projection when gated), in the inputs' dtype."""
    if act == "swiglu_oai":
        if up is None:
            raise ValueError("swiglu_oai experts are gated (need an up projection)")
        g = gate.clamp(max=limit)
        return (up.clamp(-limit, limit) + 1) * (g * torch.sigmoid(g * alpha))
    if act == "silu":
        a = F.silu(gate)
    elif act == "gelu":
        a = F.gelu(gate)
    elif act == "gelu_tanh":
        a = F.gelu(gate, approximate="tanh")
    elif act == "relu":
        a = F.relu(gate)
    elif act == "relu2":
        a = torch.square(F.relu(gate))
    else:
        raise ValueError(f"unknown MoE activation {act!r}; known: {', '.join(ACTIVATIONS)}")
    return a if up is None else a * up


def check_moe_args(act: str, gated: bool, num_experts: int, top_k_shape: tuple, weights_shape: tuple) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown MoE activation {act!r}; known: {', '.join(ACTIVATIONS)}")
    if act in GATED_ONLY and not gated:
        raise ValueError(f"{act} experts are gated: w3 (up) weights are required")
    if tuple(top_k_shape) != tuple(weights_shape):
        raise ValueError(f"selected_experts {tuple(top_k_shape)} and routing_weights {tuple(weights_shape)} differ")


def _bias(biases: Optional[List[torch.Tensor]], e: int) -> Optional[torch.Tensor]:
    return biases[e] if biases is not None else None


MOE_SCHEMA = (
    "(Tensor x, Tensor selected_experts, Tensor routing_weights, Tensor[] w1_weight, Tensor[] w2_weight, "
    "Tensor[] w3_weight, Tensor[]? w1_bias=None, Tensor[]? w2_bias=None, Tensor[]? w3_bias=None, "
    "str act=\"silu\", bool routing_on_input=False, float alpha=1.702, float limit=7.0) -> Tensor"
)


def _reference(x, selected_experts, routing_weights, num_experts, w1, w2, w3, b1, b2, b3, act, routing_on_input,
               alpha, limit):
    """The per-expert loop both torch_moe forms share; w*/b* are indexable by expert (lists or stacked tensors)."""
    gated = w3 is not None
    check_moe_args(act, gated, num_experts, selected_experts.shape, routing_weights.shape)
    shape = x.shape
    xt = x.reshape(-1, shape[-1])
    ids = selected_experts.reshape(xt.shape[0], -1)
    weights = routing_weights.reshape(xt.shape[0], -1)
    out = torch.zeros(xt.shape, dtype=torch.float32, device=x.device)
    for e in range(num_experts):
        token, slot = torch.where(ids == e)
        if token.numel() == 0:
            continue
        w = weights[token, slot, None]
        h = (xt[token] * w).to(x.dtype) if routing_on_input else xt[token]
        gate = F.linear(h, w1[e], _bias(b1, e))
        up = F.linear(h, w3[e], _bias(b3, e)) if gated else None
        y = F.linear(activation(act, gate, up, alpha, limit), w2[e], _bias(b2, e))
        out.index_add_(0, token, y.float() if routing_on_input else (y * w).float())
    return out.to(x.dtype).reshape(shape)


@torch.library.custom_op("auto_deploy::torch_moe", mutates_args=(), schema=MOE_SCHEMA)
def torch_moe(x, selected_experts, routing_weights, w1_weight, w2_weight, w3_weight, w1_bias=None, w2_bias=None,
              w3_bias=None, act="silu", routing_on_input=False, alpha=1.702, limit=7.0):
    """out[t] = sum_j routing_weights[t, j] * expert_{e}(x[t]) with e = selected_experts[t, j] (module docstring).

    x: [..., h] (tokens flattened over the leading dims); selected_experts: [tokens, top_k] integer ids;
    routing_weights: [tokens, top_k] (already normalised and scaled as the router wants). Per expert e:
    w1_weight[e] [i, h] (gate, or the only input projection when non-gated), w3_weight[e] [i, h] (up; an empty list
    means non-gated experts), w2_weight[e] [h, i] (down); optional per-expert biases of the same lists.
    routing_on_input (Llama-4): out[t] = sum_j expert_e(routing_weights[t, j] * x[t]) instead.
    Ids outside [0, num_experts) are ignored (no contribution): expert parallelism passes local ids.
    Returns x's shape and dtype; the weighted sum is accumulated in float32.

    This reference loops over experts with a data-dependent gather (a host sync per expert); `fuse_moe` replaces it
    with the fused op family, which is sync-free and CUDA-graph capturable.
    """
    return _reference(x, selected_experts, routing_weights, len(w1_weight), w1_weight, w2_weight,
                      w3_weight if len(w3_weight) else None, w1_bias, w2_bias, w3_bias, act, routing_on_input,
                      alpha, limit)


@torch_moe.register_fake
def _torch_moe_fake(x, selected_experts, routing_weights, w1_weight, w2_weight, w3_weight, w1_bias=None,
                    w2_bias=None, w3_bias=None, act="silu", routing_on_input=False, alpha=1.702, limit=7.0):
    return torch.empty_like(x)


STACKED_SCHEMA = (
    "(Tensor x, Tensor selected_experts, Tensor routing_weights, Tensor w1_weight, Tensor w2_weight, "
    "Tensor? w3_weight=None, Tensor? w1_bias=None, Tensor? w2_bias=None, Tensor? w3_bias=None, "
    "str act=\"silu\", bool routing_on_input=False, float alpha=1.702, float limit=7.0) -> Tensor"
)


@torch.library.custom_op("auto_deploy::torch_moe_stacked", mutates_args=(), schema=STACKED_SCHEMA)
def torch_moe_stacked(x, selected_experts, routing_weights, w1_weight, w2_weight, w3_weight=None, w1_bias=None,
                      w2_bias=None, w3_bias=None, act="silu", routing_on_input=False, alpha=1.702, limit=7.0):
    """torch_moe with each weight list given as one stacked tensor (w1/w3 [E, i, h], w2 [E, h, i], biases [E, .]):
    the form the export patches emit (views of transformers' stacked parameters: one graph node per layer instead of
    one per expert). `match_moe_pattern` turns it into torch_moe over per-expert parameters."""
    return _reference(x, selected_experts, routing_weights, w1_weight.shape[0], w1_weight, w2_weight, w3_weight,
                      w1_bias, w2_bias, w3_bias, act, routing_on_input, alpha, limit)


@torch_moe_stacked.register_fake
def _torch_moe_stacked_fake(x, selected_experts, routing_weights, w1_weight, w2_weight, w3_weight=None,
                            w1_bias=None, w2_bias=None, w3_bias=None, act="silu", routing_on_input=False, alpha=1.702,
                            limit=7.0):
    return torch.empty_like(x)
