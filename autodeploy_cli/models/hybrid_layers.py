"""Shrinking a hybrid model with `model_kwargs.num_hidden_layers` keeps at least one layer of every kind.

Hybrid configs name each layer's kind (`layer_types` / `layers_block_type`: linear_attention (Mamba2 or DeltaNet),
full_attention, mlp, moe). Cutting such a stack to its first N layers can drop every attention layer (Nemotron-H's
first attention layer is its 8th, Qwen3-Next's its 4th), and Nemotron-H ignores `num_hidden_layers` altogether (its
layer count is the length of its pattern). So for a hybrid config, `num_hidden_layers: N` keeps the first
max(N, P) layers, P being the shortest prefix that holds every kind: still a prefix, so a real checkpoint loads
into it exactly as into a plain truncated model. An explicit per-layer list in `model_kwargs` wins.
"""

from __future__ import annotations

from typing import Any, Optional

STATEFUL_KINDS = ("linear_attention", "mamba", "conv")  # layer kinds of stateful token mixers
PER_LAYER_KEYS = ("layer_types", "layers_block_type", "hybrid_override_pattern", "attn_layer_indices")


def wants_kind_shrink(model_kwargs: dict) -> bool:
    """`num_hidden_layers` given without an explicit per-layer list (then the kinds must be kept)."""
    return "num_hidden_layers" in model_kwargs and not any(k in model_kwargs for k in PER_LAYER_KEYS)


def hybrid_kinds(hf_config: Any) -> Optional[list[str]]:
    """The per-layer kinds of a hybrid config (several kinds, one of them a stateful mixer); None otherwise."""
    kinds = getattr(hf_config, "layer_types", None)
    if not isinstance(kinds, (list, tuple)) or not kinds:
        return None
    kinds = [str(k) for k in kinds]
    if len(set(kinds)) < 2 or not any(k in STATEFUL_KINDS for k in kinds):
        return None
    return kinds


def kept_layers(kinds: list[str], requested: int) -> int:
    """max(requested, the shortest prefix holding every kind), at most the whole stack."""
    need = max(kinds.index(k) for k in set(kinds)) + 1
    return min(len(kinds), max(int(requested), need))


def set_layer_count(hf_config: Any, kinds: list[str], requested: int) -> Optional[str]:
    """Cut `hf_config` to the kept prefix (every field that lists layers follows); a note when the count was raised
    above `requested` to keep a kind."""
    n = kept_layers(kinds, requested)
    attrs = vars(hf_config)
    for key in ("layers_block_type", "layer_types"):  # whichever is stored (the other may be an alias/property)
        if isinstance(attrs.get(key), (list, tuple)):
            setattr(hf_config, key, list(kinds[:n]))
    if isinstance(attrs.get("attn_layer_indices"), (list, tuple)):
        hf_config.attn_layer_indices = [i for i in hf_config.attn_layer_indices if i < n]
    if "num_hidden_layers" in attrs:
        hf_config.num_hidden_layers = n
    if n > requested:
        return (f"model_kwargs.num_hidden_layers={requested} keeps {n} layers: the first {n} hold every layer kind "
                f"of this hybrid model ({', '.join(sorted(set(kinds)))})")
    return None
