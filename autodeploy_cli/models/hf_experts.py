"""Which transformers experts implementation a materialised (real-weight) HF model runs with.

transformers' default `grouped_mm` experts call torch._grouped_mm, which needs 16-byte aligned strides: with expert
dims that are not multiples of 8 (bf16) or 4 (float32) it fails ("strides should be multiple of 16 bytes"), so the
HF model could not serve as the reference of `ad build --verify`, as the oracle of the tests, or as `--baseline hf`.
Such a model is switched to transformers' `eager` experts (its per-expert reference loop). An implementation the
user chose (`model_kwargs._experts_implementation`) is kept. The exported graph never depends on this: the
`hf_experts_to_torch_moe` export patch replaces the experts path there.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

EXPERT_WEIGHTS = ("gate_up_proj", "up_proj", "down_proj")


def grouped_mm_unaligned(model: nn.Module) -> Optional[str]:
    """The first stacked expert weight whose dims break torch._grouped_mm's 16-byte stride rule, else None."""
    for name, module in model.named_modules():
        for attr in EXPERT_WEIGHTS:
            w = getattr(module, attr, None)
            if not isinstance(w, nn.Parameter) or w.dim() != 3:
                continue
            if any(d * w.element_size() % 16 for d in w.shape[1:]):
                return f"{name}.{attr} {tuple(w.shape)}"
    return None


def pick_runnable_experts(model: nn.Module, user_choice: Optional[str]) -> Optional[str]:
    """Switch `model` to the eager experts when its grouped_mm default cannot run; the implementation chosen
    (None when nothing changed)."""
    cfg = getattr(model, "config", None)
    if user_choice or getattr(cfg, "_experts_implementation", None) != "grouped_mm":
        return None
    if grouped_mm_unaligned(model) is None or not hasattr(model, "set_experts_implementation"):
        return None
    model.set_experts_implementation("eager")
    return "eager"
