"""auto_deploy::torch_attention: grouped-query attention, the canonical form every attention becomes."""

from __future__ import annotations

from typing import Optional

import torch


def _to_bnsd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x.transpose(1, 2) if layout == "bsnd" else x


@torch.library.custom_op("auto_deploy::torch_attention", mutates_args=())
def torch_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = True,
    scale: Optional[float] = None,
    sinks: Optional[torch.Tensor] = None,
    sliding_window: Optional[int] = None,
    logit_cap: Optional[float] = None,
    layout: str = "bsnd",
    alibi_slopes: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Attention with native GQA (n_heads a multiple of n_kv_heads).

    q: [b, s, n, d] ("bsnd") or [b, n, s, d] ("bnsd"); k, v: [b, s_kv, n_kv, d(_v)] in the same layout.
    attn_mask: bool (True = attend) or additive float, broadcastable to [b, n, s, s_kv]. Causal masking is aligned
    bottom-right (query i sits at absolute position s_kv - s + i). sliding_window: a key is visible if
    q_pos - k_pos < sliding_window. logit_cap: cap * tanh(scores / cap) (Gemma 2). sinks: [n] extra logit per head
    that joins the softmax and is then dropped. alibi_slopes: [n] float32 (ALiBi, Bloom/MPT/Falcon): head h adds
    -slopes[h] * (q_pos - k_pos) to its scores after scale and cap (HF adds slopes[h] * k_pos; the two differ by a
    constant per query row, which the softmax ignores). dropout_p is accepted for matching only (inference: no
    dropout).
    Returns the output in the input layout: [b, s, n, d_v] or [b, n, s, d_v].
    """
    qh, kh, vh = (_to_bnsd(t, layout) for t in (q, k, v))  # [b, n, s, d]
    n, n_kv = qh.shape[1], kh.shape[1]
    if n != n_kv:
        kh = kh.repeat_interleave(n // n_kv, dim=1)
        vh = vh.repeat_interleave(n // n_kv, dim=1)
    s, s_kv = qh.shape[2], kh.shape[2]
    scale = qh.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(qh.float(), kh.float().transpose(-1, -2)) * scale  # [b, n, s, s_kv]
    if logit_cap is not None and logit_cap > 0:
        scores = logit_cap * torch.tanh(scores / logit_cap)
    q_pos = torch.arange(s, device=q.device).unsqueeze(-1) + (s_kv - s)
    k_pos = torch.arange(s_kv, device=q.device).unsqueeze(0)
    if alibi_slopes is not None:  # [n, s, s_kv]: relative distance, so it is the same in a paged cache
        scores = scores + alibi_slopes.float().view(-1, 1, 1) * (k_pos - q_pos).float()
    visible = torch.ones(s, s_kv, dtype=torch.bool, device=q.device)
    if is_causal:
        visible &= k_pos <= q_pos
    if sliding_window is not None and sliding_window > 0:
        visible &= (q_pos - k_pos) < sliding_window
    scores = scores.masked_fill(~visible, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.float()
    if sinks is not None:
        sink = sinks.float().reshape(1, -1, 1, 1).expand(scores.shape[0], -1, s, 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, vh.float()).to(q.dtype)  # [b, n, s, d_v]
    return out.transpose(1, 2).contiguous() if layout == "bsnd" else out


@torch_attention.register_fake
def _torch_attention_fake(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True, scale=None, sinks=None,
                          sliding_window=None, logit_cap=None, layout="bsnd", alibi_slopes=None):
    return q.new_empty(*q.shape[:-1], v.shape[-1])
