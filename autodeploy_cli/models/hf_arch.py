"""HF configs from the model registry's stored architecture values, and facts computed from them on the meta model.

The registry (`model_registry/architectures/*.yaml`) keeps each checkpoint's config.json values, so a registered hub
id builds offline with its exact shapes: `AutoConfig.for_model(model_type, **values)` instead of a download.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from autodeploy_cli.config.layers import deep_merge

# Version shim: model types older transformers releases do not ship, and the type with the same modules and weight
# names they map onto in newer releases (transformers 5.23 maps internlm3 onto LlamaForCausalLM; 5.17 lacks it).
MODEL_TYPE_FALLBACKS = {"internlm3": "llama"}


def config_from_values(values: dict[str, Any], overrides: dict[str, Any] | None = None) -> Any:
    """A transformers config from stored values; `overrides` (model_kwargs) go into the constructor, so fields the
    config derives in __init__ (layer_types from num_hidden_layers, head_dim, ...) follow them."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    merged = deep_merge(values, dict(overrides or {}))
    model_type = merged.pop("model_type")
    if model_type not in CONFIG_MAPPING and model_type in MODEL_TYPE_FALLBACKS:
        model_type = MODEL_TYPE_FALLBACKS[model_type]
    return AutoConfig.for_model(model_type, **merged)


def meta_model(hf_config: Any, model_factory: str = "AutoModelForCausalLM") -> nn.Module:
    """The model on the meta device: no memory, no weights."""
    import transformers

    cls = getattr(transformers, model_factory)
    with torch.device("meta"):
        return cls.from_config(hf_config)


def count_params(model: nn.Module) -> int:
    """Parameters of the model, tied weights counted once (as `model.parameters()` does)."""
    return sum(p.numel() for p in model.parameters())


def registry_hf_config(name: str, overrides: dict[str, Any] | None = None) -> Any | None:
    """The HF config of a registry entry from its stored values; None when the entry stores none."""
    from model_registry import hf_architecture

    values = hf_architecture(name)
    return None if values is None else config_from_values(values, overrides)


def mla_dims(hf_config: Any) -> tuple[int, int] | None:
    """(kv_lora_rank, qk_rope_head_dim) of a multi-head latent attention config (DeepSeek-V2/V3 family), else None."""
    cfg = getattr(hf_config, "get_text_config", lambda: hf_config)()
    rank = getattr(cfg, "kv_lora_rank", None)
    rope = getattr(cfg, "qk_rope_head_dim", None)
    return (int(rank), int(rope)) if rank and rope is not None else None


def attention_dims(hf_config: Any) -> tuple[int, int, int]:
    """(query heads, KV heads, head_dim) whatever the config calls them. Falcon keeps `num_kv_heads` equal to the
    heads when `multi_query` (one KV head) is on and uses it only with `new_decoder_architecture`; GPT-BigCode
    answers num_key_value_heads from multi_query; the others store num_key_value_heads or have one KV head per
    head."""
    cfg = getattr(hf_config, "get_text_config", lambda: hf_config)()
    heads = int(cfg.num_attention_heads)
    if getattr(cfg, "model_type", "") == "falcon":
        kv = int(cfg.num_kv_heads) if cfg.new_decoder_architecture else (1 if cfg.multi_query else heads)
    else:
        kv = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    return heads, kv, head_dim


def kv_values_per_token(hf_config: Any) -> tuple[int, bool]:
    """KV-cache values per token over all layers, and whether they split over tensor-parallel ranks by head.

    MLA caches the compressed latent and the shared RoPE key (kv_lora_rank + rope dim per layer, the same on every
    rank); attention caches K and V per KV head (2 x kv heads x head_dim per layer, split by head)."""
    cfg = getattr(hf_config, "get_text_config", lambda: hf_config)()
    layers = int(cfg.num_hidden_layers)
    mla = mla_dims(cfg)
    if mla is not None:
        return layers * (mla[0] + mla[1]), False
    heads = getattr(cfg, "num_attention_heads", None)
    if not heads:  # no attention at all (Mamba2): nothing is cached per token
        return 0, True
    _, kv_heads, head_dim = attention_dims(cfg)
    return layers * 2 * kv_heads * head_dim, True


def model_notes(hf_config: Any) -> list[str]:
    """What `ad` leaves out of a model at inference, for the build report."""
    cfg = getattr(hf_config, "get_text_config", lambda: hf_config)()
    notes = []
    mtp = int(getattr(cfg, "num_nextn_predict_layers", 0) or 0)
    if mtp:
        notes.append(f"the MTP head (num_nextn_predict_layers={mtp}: multi-token-prediction layer(s) after the "
                     f"{cfg.num_hidden_layers} decoder layers) is ignored at inference: HF builds no module for it, "
                     "its checkpoint weights are not loaded, and ad decodes one token per step")
    return notes
