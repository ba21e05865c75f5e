"""auto_deploy::torch_moe: a mixture-of-experts block after its router (the router and shared experts stay outside).

`match_moe_pattern` produces it from transformers' expert implementations (batched_mm, grouped_mm); fusion passes
later stack the per-expert weights for a fused kernel.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F


@torch.library.custom_op("auto_deploy::torch_moe", mutates_args=())
def torch_moe(
    x: torch.Tensor,
    selected_experts: torch.Tensor,
    routing_weights: torch.Tensor,
    w1_weight: List[torch.Tensor],
    w2_weight: List[torch.Tensor],
    w3_weight: List[torch.Tensor],
) -> torch.Tensor:
    """Gated-SiLU experts: out[t] = sum_j routing_weights[t, j] * expert_{e}(x[t]) with e = selected_experts[t, j].

    x: [..., h] (tokens flattened over the leading dims); selected_experts: [tokens, top_k] integer ids;
    routing_weights: [tokens, top_k] (already normalised as the router wants). Per expert e: w1_weight[e] is the
    gate projection [i, h], w3_weight[e] the up projection [i, h], w2_weight[e] the down projection [h, i];
    expert_e(x) = w2 @ (silu(w1 @ x) * (w3 @ x)). Ids outside [0, num_experts) are ignored (no contribution).
    Returns x's shape and dtype; the weighted sum is accumulated in float32.
    """
    shape = x.shape
    xt = x.reshape(-1, shape[-1])
    ids = selected_experts.reshape(xt.shape[0], -1)
    weights = routing_weights.reshape(xt.shape[0], -1)
    out = torch.zeros(xt.shape, dtype=torch.float32, device=x.device)
    for e in range(len(w1_weight)):
        token, slot = torch.where(ids == e)
        if token.numel() == 0:
            continue
        h = xt[token]
        y = F.linear(F.silu(F.linear(h, w1_weight[e])) * F.linear(h, w3_weight[e]), w2_weight[e])
        out.index_add_(0, token, (y * weights[token, slot, None]).float())
    return out.to(x.dtype).reshape(shape)


@torch_moe.register_fake
def _torch_moe_fake(x, selected_experts, routing_weights, w1_weight, w2_weight, w3_weight):
    return torch.empty_like(x)
