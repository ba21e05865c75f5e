"""auto_deploy::torch_rope_*: rotary position embeddings, the canonical forms `match_rope_pattern` produces.

All three take q and k together (one op per attention layer) and return (q_embed, k_embed) in the input layout.
`unsqueeze_dim` names the head dim that cos/sin (or freqs) lack: 1 for [b, n, s, d] ("bnsd"), 2 for [b, s, n, d]
("bsnd"), the same convention as HF's `apply_rotary_pos_emb(..., unsqueeze_dim=1)`.
"""

from __future__ import annotations

import torch


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _explicit(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return (x * cos + _rotate_half(x) * sin).to(x.dtype)


@torch.library.custom_op("auto_deploy::torch_rope_with_explicit_cos_sin", mutates_args=())
def torch_rope_with_explicit_cos_sin(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """HF-style RoPE: x * cos + rotate_half(x) * sin (rotate_half = cat(-x2, x1) of the two halves of d).

    q: [b, n, s, d] or [b, s, n, d]; k: same layout with n_kv heads. cos, sin: [b, s, d] (or [1, s, d]), made
    broadcastable with `unsqueeze(unsqueeze_dim)`. Returns (q_embed, k_embed) with the shapes and dtypes of q, k.
    """
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return _explicit(q, cos, sin), _explicit(k, cos, sin)


@torch_rope_with_explicit_cos_sin.register_fake
def _explicit_fake(q, k, cos, sin, unsqueeze_dim=1):
    return torch.empty_like(q), torch.empty_like(k)


def _deinterleave(x: torch.Tensor) -> torch.Tensor:
    """[..., d] with pairs (x0, x1), (x2, x3)... -> [..., d] as (x0, x2, ..., x1, x3, ...)."""
    *lead, d = x.shape
    return x.reshape(*lead, d // 2, 2).transpose(-1, -2).reshape(*lead, d)


@torch.library.custom_op("auto_deploy::torch_rope_with_qk_interleaving", mutates_args=())
def torch_rope_with_qk_interleaving(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on interleaved q/k (DeepSeek): de-interleave the last dim (pairs -> halves), then the explicit form.

    Shapes as `torch_rope_with_explicit_cos_sin`; the outputs are in the de-interleaved (half-split) order, as in
    HF's `apply_rotary_pos_emb_interleave`.
    """
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return _explicit(_deinterleave(q), cos, sin), _explicit(_deinterleave(k), cos, sin)


@torch_rope_with_qk_interleaving.register_fake
def _interleaving_fake(q, k, cos, sin, unsqueeze_dim=1):
    return torch.empty_like(q), torch.empty_like(k)


def _complex(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs).flatten(-2).to(x.dtype)


@torch.library.custom_op("auto_deploy::torch_rope_with_complex_freqs", mutates_args=())
def torch_rope_with_complex_freqs(
    xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor, unsqueeze_dim: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Meta-Llama-style RoPE: view adjacent pairs of the last dim as complex numbers and multiply by freqs_cis.

    xq: [b, s, n, d] (unsqueeze_dim=2) or [b, n, s, d] (unsqueeze_dim=1); xk: same layout with n_kv heads.
    freqs_cis: complex64 [b, s, d // 2] (or [1, s, d // 2]), made broadcastable with `unsqueeze(unsqueeze_dim)`.
    The product is computed in float32 and cast back to the input dtype.
    """
    freqs = freqs_cis.unsqueeze(unsqueeze_dim)
    return _complex(xq, freqs), _complex(xk, freqs)


@torch_rope_with_complex_freqs.register_fake
def _complex_fake(xq, xk, freqs_cis, unsqueeze_dim=2):
    return torch.empty_like(xq), torch.empty_like(xk)
