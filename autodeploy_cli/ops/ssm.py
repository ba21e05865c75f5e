"""auto_deploy::torch_ssm: the Mamba2 selective state space (SSD), the canonical form of every Mamba2 mixer's scan.

Shapes (b batch, s tokens, H heads, P head dim, G groups, N state size; H is a multiple of G):
    hidden_states [b, s, H, P]   x, the conv output's x part
    A [H]                        -exp(A_log), float32
    B, C [b, s, G, N]            input/output projections of the state; head h reads group h // (H // G)
    D [H]                        skip: y += D * x
    dt [b, s, H]                 raw time step; dt = clamp(softplus(dt + dt_bias), *time_step_limit)
    -> y [b, s, H, P] float32    (HF's chunk scan returns float32 too; the gated norm after it reads that)

Recurrence per head (state h [P, N], zero at the start of a prompt):
    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,   y_t = h_t C_t + D x_t

Sharding (the `mamba` tp_plan): heads split evenly across ranks and groups with them (G % world == 0): the
in_proj output [z | x, B, C | dt] splits per piece (z and x by heads, B and C by groups, dt by heads), conv
channels follow x/B/C, A, D and dt_bias split by heads, out_proj splits by rows (its input is per head) followed
by one all-reduce. Every op here is per head, so no collective is needed inside.

`ssd_chunked` and `ssm_step` are the plain-torch references the cached backends reuse (with an initial state).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F


def discretize_dt(dt: torch.Tensor, dt_bias: torch.Tensor, time_step_limit: Sequence[float]) -> torch.Tensor:
    """softplus(dt + dt_bias) clamped to the limits, in float32."""
    lo, hi = float(time_step_limit[0]), float(time_step_limit[1])
    return F.softplus(dt.float() + dt_bias.float()).clamp(min=lo, max=hi)


def _per_head(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[..., G, N] -> [..., H, N]: head h reads group h // (H // G)."""
    return t.float().repeat_interleave(heads // t.shape[-2], dim=-2)


def ssd_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                D: Optional[torch.Tensor], chunk_size: int,
                initial_state: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD over whole sequences. x [b, s, H, P], dt [b, s, H] already discretised (float32), B/C
    [b, s, G, N], initial_state [b, H, P, N] or None -> (y [b, s, H, P] float32, final state [b, H, P, N] float32).

    Within a chunk the output is an attention-like product with decays exp(cumsum(dt A)); across chunks the state
    carries over sequentially (one step per chunk)."""
    b, s, H, P = x.shape
    N = B.shape[-1]
    L = max(1, min(chunk_size, s))  # a prompt shorter than a chunk is one chunk (no padding: same result, less work)
    pad = (-s) % L
    xdt = F.pad(x.float() * dt[..., None], (0, 0, 0, 0, 0, pad))  # padded tokens: x dt = 0 and decay 1
    a = F.pad(dt * A.float(), (0, 0, 0, pad))
    Bh, Ch = (F.pad(_per_head(t, H), (0, 0, 0, 0, 0, pad)) for t in (B, C))
    nc = (s + pad) // L
    xdt, Bh, Ch = (t.reshape(b, nc, L, H, -1) for t in (xdt, Bh, Ch))
    a_cs = a.reshape(b, nc, L, H).cumsum(dim=2)  # [b, c, L, H] log-decay from the chunk start
    seg = a_cs[:, :, :, None, :] - a_cs[:, :, None, :, :]  # [b, c, l, s', H]: decay from s' to l
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    decay = torch.where(causal[None, None, :, :, None], seg, torch.full_like(seg, float("-inf"))).exp()
    scores = torch.einsum("bclhn,bcshn->bclsh", Ch, Bh) * decay
    y = torch.einsum("bclsh,bcshp->bclhp", scores, xdt)
    to_end = (a_cs[:, :, -1:, :] - a_cs).exp()  # [b, c, L, H] decay from each token to the chunk end
    chunk_states = torch.einsum("bclhn,bclh,bclhp->bchpn", Bh, to_end, xdt)
    chunk_decay = a_cs[:, :, -1, :].exp()  # [b, c, H]
    h = x.new_zeros(b, H, P, N, dtype=torch.float32) if initial_state is None else initial_state.float()
    starts = []
    for c in range(nc):
        starts.append(h)
        h = h * chunk_decay[:, c, :, None, None] + chunk_states[:, c]
    y = y + torch.einsum("bclhn,bchpn->bclhp", Ch, torch.stack(starts, dim=1)) * a_cs.exp()[..., None]
    y = y.reshape(b, nc * L, H, P)[:, :s]
    if D is not None:
        y = y + D.float()[:, None] * x.float()
    return y, h


def ssm_step(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor, D: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per sequence: state [n, H, P, N], x [n, H, P], dt [n, H] discretised, B/C [n, G, N] ->
    (y [n, H, P] float32, new state [n, H, P, N] float32)."""
    H = x.shape[1]
    dA = (dt * A.float()).exp()  # [n, H]
    Bh, Ch = _per_head(B, H), _per_head(C, H)  # [n, H, N]
    xf = x.float()
    h = state.float() * dA[..., None, None] + (dt[..., None] * xf)[..., None] * Bh[:, :, None, :]
    y = torch.einsum("nhpk,nhk->nhp", h, Ch)
    if D is not None:
        y = y + D.float()[:, None] * xf
    return y, h


@torch.library.custom_op("auto_deploy::torch_ssm", mutates_args=())
def torch_ssm(
    hidden_states: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    dt: torch.Tensor,
    dt_bias: torch.Tensor,
    time_step_limit: List[float],
    chunk_size: int,
) -> torch.Tensor:
    """Mamba2 SSD over whole prompts (no state in or out): see the module docstring for shapes."""
    y, _ = ssd_chunked(hidden_states, discretize_dt(dt, dt_bias, time_step_limit), A, B, C, D, chunk_size)
    return y


@torch_ssm.register_fake
def _torch_ssm_fake(hidden_states, A, B, C, D, dt, dt_bias, time_step_limit, chunk_size):
    return hidden_states.new_empty(hidden_states.shape, dtype=torch.float32)
