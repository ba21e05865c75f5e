"""auto_deploy::torch_mla: multi-head latent attention (DeepSeek-V2/V3), the canonical form MLA layers become.

The op takes the *compressed* KV (the latent `compressed_kv` after its norm, and the shared RoPE key `kpe` after
RoPE) plus the up-projection `kv_b_proj_weight` as an argument, so a cached backend stores only the latent and
weight absorption or sharding by head stay graph rewrites. Per head h (nope = qk_nope_head_dim, v = v_head_dim):

    k_nope[h], v[h] = split(compressed_kv @ kv_b_proj_weight.view(n, nope + v, r)[h].T, [nope, v])
    k[h] = cat(k_nope[h], kpe)          q[h] = cat(q_nope[h], q_pe[h])
    out[h] = softmax(q[h] k[h]^T * scale (causal)) v[h]

The reference expands K/V (what HF computes); backends absorb W_uk into q and W_uv into the output instead.
"""

from __future__ import annotations

from typing import Optional

import torch


def split_kv_b_proj(weight: torch.Tensor, n_heads: int, nope: int) -> tuple[torch.Tensor, torch.Tensor]:
    """kv_b_proj weight [n * (nope + v), r] -> W_uk [n, nope, r], W_uv [n, v, r] (views, no copy)."""
    w = weight.view(n_heads, -1, weight.shape[-1])
    return w[:, :nope], w[:, nope:]


def mla_expand_attention(q_nope: torch.Tensor, q_pe: torch.Tensor, ckv: torch.Tensor, kpe: torch.Tensor,
                         weight: torch.Tensor, scale: float, q_pos: torch.Tensor) -> torch.Tensor:
    """One sequence, expanded form, float32 math: q_nope [s, n, nope], q_pe [s, n, rope] at positions q_pos [s]
    over keys 0..L-1: ckv [L, r], kpe [L, rope] -> [s, n, v] (causal: key j visible to a query at p if j <= p)."""
    n, nope = q_nope.shape[1], q_nope.shape[2]
    w_uk, w_uv = split_kv_b_proj(weight.float(), n, nope)
    ckv, kpe = ckv.float(), kpe.float()
    k_nope = torch.einsum("lr,hdr->hld", ckv, w_uk)  # [n, L, nope]
    v = torch.einsum("lr,hdr->hld", ckv, w_uv)  # [n, L, v]
    scores = torch.einsum("shd,hld->hsl", q_nope.float(), k_nope) + torch.einsum("shd,ld->hsl", q_pe.float(), kpe)
    scores = scores * scale
    k_pos = torch.arange(ckv.shape[0], device=ckv.device)
    scores = scores.masked_fill(k_pos.view(1, 1, -1) > q_pos.view(1, -1, 1), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("hsl,hld->shd", probs, v)


@torch.library.custom_op("auto_deploy::torch_mla", mutates_args=())
def torch_mla(
    q_nope: torch.Tensor,
    q_pe: torch.Tensor,
    compressed_kv: torch.Tensor,
    kpe: torch.Tensor,
    kv_b_proj_weight: torch.Tensor,
    is_causal: bool = True,
    scale: Optional[float] = None,
    layout: str = "bsnd",
) -> torch.Tensor:
    """Multi-head latent attention.

    q_nope [b, s, n, nope], q_pe [b, s, n, rope] ("bsnd"; "bnsd": [b, n, s, .]); compressed_kv [b, s, r];
    kpe [b, s, 1, rope] ("bnsd": [b, 1, s, rope]); kv_b_proj_weight [n * (nope + v), r]. Causal masking is
    aligned bottom-right. scale defaults to (nope + rope) ** -0.5. Returns [b, s, n, v] ("bnsd": [b, n, s, v]).
    """
    if layout == "bnsd":
        q_nope, q_pe, kpe = (t.transpose(1, 2) for t in (q_nope, q_pe, kpe))
    b, s, n, nope = q_nope.shape
    s_kv = compressed_kv.shape[1]
    scale = (nope + q_pe.shape[-1]) ** -0.5 if scale is None else scale
    q_pos = torch.arange(s, device=q_nope.device) + (s_kv - s)
    if not is_causal:
        q_pos = torch.full_like(q_pos, s_kv)
    outs = [mla_expand_attention(q_nope[i], q_pe[i], compressed_kv[i], kpe[i, :, 0], kv_b_proj_weight, scale, q_pos)
            for i in range(b)]
    out = torch.stack(outs).to(q_nope.dtype)  # [b, s, n, v]
    return out.transpose(1, 2).contiguous() if layout == "bnsd" else out


@torch_mla.register_fake
def _torch_mla_fake(q_nope, q_pe, compressed_kv, kpe, kv_b_proj_weight, is_causal=True, scale=None, layout="bsnd"):
    n = q_nope.shape[2] if layout == "bsnd" else q_nope.shape[1]
    v_dim = kv_b_proj_weight.shape[0] // n - q_nope.shape[-1]
    return q_nope.new_empty(*q_nope.shape[:-1], v_dim)
