"""auto_deploy::torch_gated_delta_rule: DeltaNet / Gated DeltaNet linear attention (Qwen3-Next's linear layers).

Shapes (b batch, s tokens, Hk key heads, Hv value heads (a multiple of Hk), K key dim, V value dim):
    q, k [b, s, Hk, K], v [b, s, Hv, V]
    g [b, s, Hv] or None   log decay per token (<= 0); None = no decay (plain DeltaNet)
    beta [b, s, Hv]        write strength (the models pass sigmoid(b))
    scale                  query scale (None: K ** -0.5)
    use_qk_l2norm          L2-normalise q and k over K first (eps 1e-6), as Qwen3-Next does
    -> o [b, s, Hv, V] in v's dtype

Recurrence per value head h (state S [K, V], zero at the start of a prompt; head h reads key head h // (Hv // Hk)):
    S' = exp(g_t) S_{t-1};  S_t = S' + k_t (beta_t (v_t - S'^T k_t))^T;  o_t = S_t^T (scale q_t)

Sharding: value heads split evenly across ranks with their key heads (Hk % world == 0); the recurrence is per head.

`delta_chunked` and `delta_step` are the plain-torch references the cached backends reuse (with an initial state).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def prepare_qk(q: torch.Tensor, k: torch.Tensor, hv: int, scale: Optional[float],
               use_qk_l2norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 q (scaled) and k, normalised if asked, repeated to the value heads: [..., Hk, K] -> [..., Hv, K]."""
    q, k = q.float(), k.float()
    if use_qk_l2norm:
        q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-6)
        k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    q = q * (q.shape[-1] ** -0.5 if scale is None else scale)
    rep = hv // q.shape[-2]
    return q.repeat_interleave(rep, dim=-2), k.repeat_interleave(rep, dim=-2)


def delta_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor], beta: torch.Tensor,
                  initial_state: Optional[torch.Tensor] = None,
                  chunk_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked gated delta rule. q, k [b, s, H, K] prepared (prepare_qk), v [b, s, H, V], g/beta [b, s, H],
    initial_state [b, H, K, V] -> (o [b, s, H, V] float32, final state [b, H, K, V] float32).

    Per chunk with start state S0 and cumulative log decay c_t: the new values u solve the unit lower-triangular
    system u_t + sum_{j<t} beta_t e^{c_t - c_j} (k_t . k_j) u_j = beta_t (v_t - e^{c_t} S0^T k_t); then
    o_t = e^{c_t} S0^T q_t + sum_{j<=t} e^{c_t - c_j} (q_t . k_j) u_j and S_L = e^{c_L} S0 + sum_j e^{c_L - c_j} k_j u_j^T."""
    b, s, H, Kd = k.shape
    L = max(1, min(chunk_size, s))  # a prompt shorter than a chunk is one chunk (exact for any chunk length)
    pad = (-s) % L
    g = torch.zeros_like(beta, dtype=torch.float32) if g is None else g.float()
    qc, kc, vc = (F.pad(t.float(), (0, 0, 0, 0, 0, pad)).reshape(b, -1, L, H, t.shape[-1]).transpose(2, 3)
                  for t in (q, k, v))  # [b, c, H, L, d]; padded tokens: k = 0, beta = 0, g = 0 (no effect)
    gc, bc = (F.pad(t, (0, 0, 0, pad)).reshape(b, -1, L, H).transpose(2, 3) for t in (g, beta.float()))
    cs = gc.cumsum(-1)  # [b, c, H, L]
    rel = cs[..., :, None] - cs[..., None, :]  # [b, c, H, L, L]: c_t - c_j
    lower = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    dec = torch.where(lower, rel, torch.full_like(rel, float("-inf"))).exp()  # e^{c_t - c_j}, j <= t
    strict = dec * (1 - torch.eye(L, device=q.device))
    system = torch.eye(L, device=q.device) + bc[..., None] * strict * (kc @ kc.transpose(-1, -2))
    attn = (qc @ kc.transpose(-1, -2)) * dec  # [b, c, H, L, L]
    S = q.new_zeros(b, H, Kd, v.shape[-1], dtype=torch.float32) if initial_state is None else initial_state.float()
    outs = []
    for c in range(qc.shape[1]):
        ec = cs[:, c].exp()[..., None]  # [b, H, L, 1]
        rhs = bc[:, c, ..., None] * (vc[:, c] - ec * (kc[:, c] @ S))
        u = torch.linalg.solve_triangular(system[:, c], rhs, upper=False, unitriangular=True)
        outs.append(ec * (qc[:, c] @ S) + attn[:, c] @ u)
        to_end = (cs[:, c, :, -1:] - cs[:, c]).exp()[..., None]  # [b, H, L, 1]
        S = cs[:, c, :, -1].exp()[..., None, None] * S + (kc[:, c] * to_end).transpose(-1, -2) @ u
    o = torch.stack(outs, dim=1).transpose(2, 3).reshape(b, -1, H, v.shape[-1])[:, :s]
    return o, S


def delta_step(state: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],
               beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per sequence: state [n, H, K, V], q/k [n, H, K] prepared, v [n, H, V], g/beta [n, H] ->
    (o [n, H, V] float32, new state float32)."""
    S = state.float()
    if g is not None:
        S = S * g.float().exp()[..., None, None]
    delta = (v.float() - torch.einsum("nhkv,nhk->nhv", S, k)) * beta.float()[..., None]
    S = S + k[..., :, None] * delta[..., None, :]
    return torch.einsum("nhkv,nhk->nhv", S, q), S


@torch.library.custom_op("auto_deploy::torch_gated_delta_rule", mutates_args=())
def torch_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor],
    beta: torch.Tensor,
    scale: Optional[float] = None,
    use_qk_l2norm: bool = True,
) -> torch.Tensor:
    """(Gated) delta rule over whole prompts: see the module docstring for shapes."""
    qh, kh = prepare_qk(q, k, v.shape[-2], scale, use_qk_l2norm)
    o, _ = delta_chunked(qh, kh, v, g, beta)
    return o.to(v.dtype)


@torch_gated_delta_rule.register_fake
def _torch_gated_delta_rule_fake(q, k, v, g, beta, scale=None, use_qk_l2norm=True):
    return torch.empty_like(v)
