"""Export patch: transformers' multi-head latent attention (DeepSeek-V2/V3 and the architectures reusing it) routed
to auto_deploy::torch_mla, so the graph keeps the compressed KV instead of per-head K/V.

HF's MLA forward up-projects the latent (`kv_b_proj`) into per-head keys and values before attention; exported as
is, the cache insertion would cache those (DeepSeek-V3: 128 x (192 + 128) values per token and layer instead of
512 + 64). Under this patch each MLA attention module runs the same projections and norms, its RoPE as the canonical
torch_rope_* op (complex frequencies for DeepSeek-V2, cos/sin pairs with `rope_interleave` for V3, rotate-half
otherwise), then calls

    torch_mla(q_nope, q_pe, compressed_kv, kpe, kv_b_proj.weight, is_causal=True, scale=module.scaling)

with kv_b_proj's weight as an argument. The yarn mscale stays where HF puts it: on cos/sin (the RoPE part of q
and k) and in `module.scaling` (mscale_all_dim squared). Kimi-K2 and Moonlight load as DeepseekV3; GLM-4.7-Flash
(glm4_moe_lite) and Youtu copy DeepSeek-V3's module, MiniCPM3 DeepSeek-V2's with cos/sin RoPE (each verified on
a tiny config). GLM-4.5 (glm4_moe) is grouped-query attention, not MLA; LongCat-Flash's MLA scales its latents
(not covered: it keeps the expanded path).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterator

import torch
from torch import nn

from autodeploy_cli.export.patches import register_export_patch

# attention class -> how its RoPE is applied: "complex" (freqs_cis), "config" (cos/sin, interleaved when
# config.rope_interleave), "rotate_half" (cos/sin)
MLA_CLASSES = {
    "DeepseekV2Attention": "complex",
    "DeepseekV3Attention": "config",
    "Glm4MoeLiteAttention": "config",
    "YoutuAttention": "config",
    "MiniCPM3Attention": "rotate_half",
}


def is_mla_module(module: nn.Module) -> bool:
    return type(module).__name__ in MLA_CLASSES and hasattr(module, "kv_b_proj")


def _apply_rope(module: nn.Module, q_pe: torch.Tensor, k_pe: torch.Tensor, position_embeddings: Any):
    """The module's RoPE as the canonical op, on q_pe [b, s, n, rope] and k_pe [b, s, 1, rope] (bsnd: no
    transposes): the same formulas as HF's apply_rotary_emb (complex frequencies), apply_rotary_pos_emb_interleave
    (pairs rotated, output in halves) and apply_rotary_pos_emb (rotate-half)."""
    ops = torch.ops.auto_deploy
    kind = MLA_CLASSES[type(module).__name__]
    if kind == "complex":
        return ops.torch_rope_with_complex_freqs(q_pe, k_pe, position_embeddings.to(q_pe.device), 2)
    cos, sin = position_embeddings
    if kind == "config" and getattr(module.config, "rope_interleave", False):
        return ops.torch_rope_with_qk_interleaving(q_pe, k_pe, cos, sin, 2)
    return ops.torch_rope_with_explicit_cos_sin(q_pe, k_pe, cos, sin, 2)


def mla_forward(module: nn.Module, hidden_states: torch.Tensor, position_embeddings: Any) -> torch.Tensor:
    """HF's MLA projections and RoPE, then torch_mla; hidden_states [b, s, hidden] -> [b, s, hidden]."""
    from autodeploy_cli.ops import load_ops

    load_ops()
    b, s = hidden_states.shape[:-1]
    n, nope, rope = module.num_heads, module.qk_nope_head_dim, module.qk_rope_head_dim
    if module.q_lora_rank is None:
        q = module.q_proj(hidden_states)
    else:
        q = module.q_b_proj(module.q_a_layernorm(module.q_a_proj(hidden_states)))
    q_nope, q_pe = torch.split(q.view(b, s, n, nope + rope), [nope, rope], dim=-1)  # [b, s, n, .]
    latent = module.kv_a_proj_with_mqa(hidden_states)
    ckv, k_pe = torch.split(latent, [module.kv_lora_rank, rope], dim=-1)
    ckv = module.kv_a_layernorm(ckv)  # [b, s, r]
    q_pe, k_pe = _apply_rope(module, q_pe, k_pe.view(b, s, 1, rope), position_embeddings)
    out = torch.ops.auto_deploy.torch_mla(q_nope, q_pe, ckv, k_pe, module.kv_b_proj.weight, True, module.scaling,
                                          "bsnd")  # [b, s, n, v]
    return module.o_proj(out.reshape(b, s, n * module.v_head_dim))


def _patched_forward(module: nn.Module):
    signature = inspect.signature(type(module).forward)

    def forward(*args: Any, **kwargs: Any):
        bound = signature.bind_partial(module, *args, **kwargs).arguments
        extra = bound.get("kwargs", {})
        pos = bound.get("position_embeddings", extra.get("position_embeddings"))
        return mla_forward(module, bound["hidden_states"], pos), None

    return forward


@register_export_patch(
    "hf_mla_to_torch_mla",
    "HF multi-head latent attention (DeepSeek-V2/V3, Kimi-K2, Moonlight, GLM-4.7-Flash, ...) becomes "
    "auto_deploy::torch_mla on the compressed KV",
)
@contextlib.contextmanager
def hf_mla_to_torch_mla(model: nn.Module) -> Iterator[None]:
    patched = [m for m in model.modules() if is_mla_module(m)]
    for m in patched:
        m.forward = _patched_forward(m)  # an instance attribute: nn.Module.__call__ finds it first
    try:
        yield
    finally:
        for m in patched:
            del m.forward  # back to the class method
