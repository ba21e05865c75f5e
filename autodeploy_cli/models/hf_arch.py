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


def cached_step(model: nn.Module, input_ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
    """One forward of a HF causal LM with its own KV cache -> (logits, cache). Version shim: transformers >= 5.2x
    names the argument and output `cache`; 5.17 (the GPU machine) names both `past_key_values`."""
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=input_ids, use_cache=True, **{name: cache})
    return out.logits, getattr(out, name)
