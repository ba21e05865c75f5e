"""Hugging Face model/tokenizer factory.

`model` may be a local HF folder, a model-registry name, or a hub id. The model is built on the meta device for
capture; real weights are materialised later (`materialize`) from the checkpoint or a seeded random init.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autodeploy_cli.config.schema import ADConfig
from autodeploy_cli.errors import ADError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ADError(f"`device: {name}` was asked for but no CUDA GPU is visible. Use `device=cpu` or `device=auto`.")
    return device


def deep_update_config(hf_config: Any, overrides: dict[str, Any], path: str = "model_kwargs") -> None:
    """Apply `model_kwargs` onto a HF config, recursing into sub-configs and dict-valued fields."""
    for key, value in overrides.items():
        current = getattr(hf_config, key, None)
        if isinstance(value, dict) and hasattr(current, "to_dict"):
            deep_update_config(current, value, f"{path}.{key}")
        elif isinstance(value, dict) and isinstance(current, dict):
            merged = copy.deepcopy(current)
            merged.update(value)
            setattr(hf_config, key, merged)
        else:
            setattr(hf_config, key, value)


class ModelFactory:
    """Builds the HF config, the meta-device model, the real weights and the tokenizer for one config."""

    def __init__(self, config: ADConfig, device: torch.device | None = None):
        self.config = config
        self.device = device or resolve_device(config.device)
        self.source = self._resolve_source(config.model)
        self._hf_config: Any = None

    # --- source -------------------------------------------------------------------------------------------------
    @staticmethod
    def _resolve_source(model: str) -> str:
        from model_registry import get_entry, local_model_dir

        local = local_model_dir(model)
        if local is not None:
            return str(local)
        path = Path(model).expanduser()
        if path.exists():
            if not (path / "config.json").is_file():
                raise ADError(
                    f"`model: {model}` is a folder without a config.json. Point `model` at a Hugging Face model "
                    "folder (config.json, *.safetensors, tokenizer files), a hub id, or a model-registry name."
                )
            return str(path.resolve())
        if get_entry(model) is None and (model.startswith((".", "/", "~")) or model.count("/") != 1):
            from autodeploy_cli.errors import did_you_mean
            from model_registry import load_registry

            raise ADError(
                f"Unknown model `{model}`: it is not a local folder, not a model-registry name and not a hub id of "
                f"the form `org/name`.{did_you_mean(model, load_registry())} Pass a local HF folder "
                "(`model=/path/to/hf_dir`), a hub id, or a registry name (`ad models` lists them)."
            )
        return model

    @property
    def is_local(self) -> bool:
        return Path(self.source).is_dir()

    # --- config -------------------------------------------------------------------------------------------------
    def hf_config(self) -> Any:
        """The HF config with `model_kwargs` applied (cached)."""
        if self._hf_config is None:
            from transformers import AutoConfig

            cfg = None if self.is_local else self._registry_config()
            if cfg is None:
                try:
                    cfg = AutoConfig.from_pretrained(self.source, trust_remote_code=self.config.trust_remote_code)
                except (OSError, ValueError) as e:
                    raise self._load_error("config", e) from None
            deep_update_config(cfg, dict(self.config.model_kwargs))
            self._hf_config = cfg
        return self._hf_config

    def _registry_config(self) -> Any:
        """A registry hub id with stored architecture values: the HF cache wins, else build from the stored values
        (offline, exact shapes); None for anything else."""
        from model_registry import hf_architecture

        if hf_architecture(self.source) is None:
            return None
        from transformers import AutoConfig

        from autodeploy_cli.models.hf_arch import registry_hf_config

        try:
            return AutoConfig.from_pretrained(self.source, local_files_only=True,
                                              trust_remote_code=self.config.trust_remote_code)
        except (OSError, ValueError):
            return registry_hf_config(self.source, dict(self.config.model_kwargs))

    def _load_error(self, what: str, err: Exception) -> ADError:
        first = (str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__).rstrip(".")
        if self.is_local:
            hint = " For random weights of the same shapes set `skip_loading_weights=true`." if what == "weights" else ""
            return ADError(f"Could not load the {what} from `{self.source}`: {first}.{hint}")
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        return ADError(
            f"Could not load the {what} of `{self.source}` from the Hugging Face hub"
            f"{' (HF_HUB_OFFLINE=1)' if offline else ''}: {first}. If there is no network, download the model "
            "elsewhere and point `model` at the local folder (`model=/path/to/hf_dir`)."
        )

    def model_dtype(self) -> torch.dtype:
        if self.config.dtype != "auto":
            return _DTYPES[self.config.dtype]
        if self.device.type == "cpu":
            return torch.float32
        dtype = getattr(self.hf_config(), "dtype", None) or getattr(self.hf_config(), "torch_dtype", None)
        if isinstance(dtype, str):
            dtype = _DTYPES.get(dtype)
        return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.bfloat16

    # --- models -------------------------------------------------------------------------------------------------
    def _auto_class(self) -> Any:
        import transformers

        cls = getattr(transformers, self.config.model_factory, None)
        if cls is None or not hasattr(cls, "from_config"):
            raise ADError(
                f"`model_factory: {self.config.model_factory}` is not a transformers Auto class. "
                "Use AutoModelForCausalLM (the default)."
            )
        return cls

    def _from_config(self) -> nn.Module:
        return self._auto_class().from_config(
            self.hf_config(), dtype=self.model_dtype(), trust_remote_code=self.config.trust_remote_code
        )

    def build_meta_model(self) -> nn.Module:
        """The model on the meta device (no memory, no weights), in eval mode."""
        with torch.device("meta"):
            model = self._from_config()
        return model.eval()

    def materialize(self, device: torch.device | None = None) -> nn.Module:
        """A real HF model on `device`: the checkpoint, or a seeded random init with `skip_loading_weights`.
        Its experts run a path that works for their shapes (models/hf_experts.py)."""
        from autodeploy_cli.models.hf_experts import pick_runnable_experts

        shared = self.hf_config()
        self._hf_config = copy.deepcopy(shared)  # the real model gets its own config: switching its experts
        try:  # implementation below must not reach the meta model's (the export's)
            model = self._materialize(device or self.device)
        finally:
            self._hf_config = shared
        pick_runnable_experts(model, dict(self.config.model_kwargs).get("_experts_implementation"))
        return model

    def _materialize(self, device: torch.device) -> nn.Module:
        if self.config.skip_loading_weights:
            torch.manual_seed(self.config.seed)
            with torch.device(device):
                model = self._from_config()
            return model.eval()
        import importlib.util

        # device_map needs `accelerate`; without it load on the CPU and move (slower, same result)
        direct = importlib.util.find_spec("accelerate") is not None or device.type == "cpu"
        try:
            model = self._auto_class().from_pretrained(
                self.source,
                config=self.hf_config(),
                dtype=self.model_dtype(),
                trust_remote_code=self.config.trust_remote_code,
                **({"device_map": str(device)} if direct and device.type != "cpu" else {}),
            )
        except (OSError, ValueError) as e:
            raise self._load_error("weights", e) from None
        return model.to(device).eval()

    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        source = self.config.tokenizer or self.source
        try:
            return AutoTokenizer.from_pretrained(
                source, trust_remote_code=self.config.trust_remote_code, **dict(self.config.tokenizer_kwargs)
            )
        except (OSError, ValueError) as e:
            raise self._load_error("tokenizer", e) from None
