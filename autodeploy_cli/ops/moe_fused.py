"""The fused MoE op family: experts stacked into two tensors, the form `fuse_moe` produces.

  auto_deploy::torch_moe_fused(x, selected_experts, routing_weights, w13, w2, b13, b2, act, gated,
                               routing_on_input, alpha, limit) -> [..., h]        (this module: torch backend)
  auto_deploy::triton_moe_fused(same arguments)                                    (kernels/triton/moe.py)

Weights: w13 [E, 2I, h] (gated: rows [0, I) are the gate projection, rows [I, 2I) the up projection) or [E, I, h]
(non-gated); w2 [E, h, I]; optional biases b13 [E, 2I] / [E, I] and b2 [E, h]. The expert function, activations
and routing_on_input are those of `auto_deploy::torch_moe` (ops/moe.py).

Expert-parallel contract: the op computes only experts 0 .. E-1 of the weights it is given and IGNORES every
(token, slot) whose id is outside [0, E): no weight is read for it and it adds nothing (not even a bias). Expert
parallelism is therefore a graph rewrite, not a new kernel: each rank slices w13/w2 (and the biases) to its
contiguous expert range [start, start + E_local), passes `selected_experts - start` (ids of other ranks fall outside
[0, E_local)), and all-reduces the op's output across the EP group.

No backend reads a value on the host or makes a data-dependent shape, so the op can be captured in a CUDA graph at
any token count and CPU and GPU builds share one graph.
"""

from __future__ import annotations

import torch

from autodeploy_cli.ops.moe import activation, check_moe_args

FUSED_SCHEMA = (
    "(Tensor x, Tensor selected_experts, Tensor routing_weights, Tensor w13, Tensor w2, Tensor? b13=None, "
    "Tensor? b2=None, str act=\"silu\", bool gated=True, bool routing_on_input=False, float alpha=1.702, "
    "float limit=7.0) -> Tensor"
)


def _act(act: str, gated: bool, proj: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    if not gated:
        return activation(act, proj, None, alpha, limit)
    inter = proj.shape[-1] // 2
    return activation(act, proj[..., :inter], proj[..., inter:], alpha, limit)


def _gathered(xt, ids, weights, valid, w13, w2, b13, b2, act, gated, routing_on_input, alpha, limit):
    """Few (token, slot) pairs: gather each pair's expert weights (reads at most T * k <= E experts)."""
    t, k = ids.shape
    flat = torch.where(valid, ids, 0).reshape(-1)
    wv = torch.where(valid, weights, 0).reshape(-1, 1)
    h = xt.repeat_interleave(k, 0)  # [T * k, h]
    if routing_on_input:
        h = (h * wv).to(xt.dtype)
    proj = torch.bmm(w13[flat], h.unsqueeze(-1)).squeeze(-1)
    if b13 is not None:
        proj = proj + b13[flat]
    y = torch.bmm(w2[flat], _act(act, gated, proj, alpha, limit).unsqueeze(-1)).squeeze(-1)
    if b2 is not None:
        y = y + b2[flat]
    y = y.float() * (valid.reshape(-1, 1) if routing_on_input else wv)
    return y.view(t, k, -1).sum(1)


def _dense(xt, ids, weights, w13, w2, b13, b2, act, gated, routing_on_input, alpha, limit):
    """Many pairs: every expert runs on every token, masked by its routing weight (no gather, no sync)."""
    out = torch.zeros(xt.shape[0], w2.shape[1], dtype=torch.float32, device=xt.device)
    for e in range(w13.shape[0]):
        hit = ids == e
        we = (weights.float() * hit).sum(-1, keepdim=True)  # [T, 1]: 0 where expert e is not routed
        h = (xt * we).to(xt.dtype) if routing_on_input else xt
        proj = torch.nn.functional.linear(h, w13[e], None if b13 is None else b13[e])
        y = torch.nn.functional.linear(_act(act, gated, proj, alpha, limit), w2[e], None if b2 is None else b2[e])
        out += y.float() * (hit.any(-1, keepdim=True) if routing_on_input else we)
    return out


@torch.library.custom_op("auto_deploy::torch_moe_fused", mutates_args=(), schema=FUSED_SCHEMA)
def torch_moe_fused(x, selected_experts, routing_weights, w13, w2, b13=None, b2=None, act="silu", gated=True,
                    routing_on_input=False, alpha=1.702, limit=7.0):
    """Reference / CPU backend of the fused family (module docstring). Ids outside [0, E) are ignored: the
    expert-parallel contract (a rank passes its expert slice and ids - start). Sync-free: with T * k <= E (decode)
    each pair gathers its expert's weights; otherwise every expert runs densely on all tokens under a routing mask
    (E/k times the FLOPs, bounded memory). Accumulates in float32, returns x's shape and dtype."""
    check_moe_args(act, gated, w13.shape[0], selected_experts.shape, routing_weights.shape)
    shape = x.shape
    xt = x.reshape(-1, shape[-1])
    ids = selected_experts.reshape(xt.shape[0], -1)
    weights = routing_weights.reshape(xt.shape[0], -1)
    num_experts = w13.shape[0]
    args = (w13, w2, b13, b2, act, gated, routing_on_input, alpha, limit)
    if ids.numel() <= num_experts:
        valid = (ids >= 0) & (ids < num_experts)
        out = _gathered(xt, ids, weights, valid, *args)
    else:
        out = _dense(xt, ids, weights, *args)
    return out.to(x.dtype).reshape(shape)


@torch_moe_fused.register_fake
def _torch_moe_fused_fake(x, selected_experts, routing_weights, w13, w2, b13=None, b2=None, act="silu", gated=True,
                          routing_on_input=False, alpha=1.702, limit=7.0):
    return torch.empty_like(x)
