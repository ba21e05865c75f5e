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

from autodeploy_cli.config.checks import resolve_model_source
from autodeploy_cli.config.schema import ADConfig
from autodeploy_cli.errors import ADError, first_line
from autodeploy_cli.models.hub import hub_unreachable  # tests patch it here, as factory.hub_unreachable

# files AutoTokenizer reads a tokenizer from (fast json, sentencepiece, BPE vocab + merges, or its config)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "tokenizer_config.json")
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
        self.source = resolve_model_source(config.model)
        self._hf_config: Any = None
        self._quant: Any = False  # not read yet (None: the model is not quantized)
        self._ckpt: Any = None  # the quantized checkpoint's headers, read once
        self._buffers: dict[str, torch.Tensor] | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.source).is_dir()

    # --- config -------------------------------------------------------------------------------------------------
    def hf_config(self) -> Any:
        """The HF config with `model_kwargs` applied (cached)."""
        if self._hf_config is None:
            from transformers import AutoConfig

            from autodeploy_cli.models.hybrid_layers import hybrid_kinds, set_layer_count, wants_kind_shrink

            kwargs = dict(self.config.model_kwargs)
            shrink = wants_kind_shrink(kwargs)
            # a hybrid's layer kinds come from the full stack: build it first, then cut it keeping every kind
            base = {k: v for k, v in kwargs.items() if k != "num_hidden_layers"} if shrink else kwargs
            cfg = None if self.is_local else self._registry_config(base)
            if cfg is None:
                cfg = self._load("config", AutoConfig.from_pretrained, self.source,
                                 trust_remote_code=self.config.trust_remote_code)
            kinds = hybrid_kinds(cfg) if shrink else None
            if shrink and kinds is None and not self.is_local:
                cfg = self._registry_config(kwargs) or cfg  # not a hybrid: num_hidden_layers as before
            deep_update_config(cfg, kwargs)
            if kinds is not None:
                note = set_layer_count(cfg, kinds, int(kwargs["num_hidden_layers"]))
                if note:
                    from autodeploy_cli.log import get_logger

                    get_logger().info(note)
            self._hf_config = cfg
        return self._hf_config

    def _registry_config(self, overrides: dict[str, Any]) -> Any:
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
            return registry_hf_config(self.source, overrides)

    def _load(self, what: str, loader: Any, source: str, **kwargs: Any) -> Any:
        """`loader(source, **kwargs)` for a local folder or a hub id: the HF cache first (no network); then, only if
        the hub answers, a download; an unreachable hub is one clear error instead of minutes of retries."""
        try:
            if Path(source).is_dir() or os.environ.get("HF_HUB_OFFLINE") == "1":
                return loader(source, **kwargs)
            try:
                return loader(source, local_files_only=True, **kwargs)
            except (OSError, ValueError):
                reason = hub_unreachable()
                if reason:
                    raise ADError(
                        f"Could not load the {what} of `{source}`: it is not in the Hugging Face cache and the hub "
                        f"cannot be reached ({reason}). Without network, download the model elsewhere and point "
                        "`model` at the local folder (`model=/path/to/hf_dir`), or set HF_HUB_OFFLINE=1 to use only "
                        "what is cached."
                    ) from None
                return loader(source, **kwargs)
        except (OSError, ValueError) as e:
            raise self._load_error(what, e) from None

    def _load_error(self, what: str, err: Exception) -> ADError:
        first = first_line(err).rstrip(".")
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
        if dtype is None and self.checkpoint_quantized:  # not a float16 default: the checkpoint's own float dtype
            dtype = self._checkpoint_headers().float_dtype()
        return dtype if dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.bfloat16

    # --- quantization -------------------------------------------------------------------------------------------
    def quant_scheme(self) -> Any:
        """The model's QuantScheme (checkpoint's config, stored registry copy, or `quant_config`), or None."""
        if self._quant is False:
            from model_registry import stored_quant_config

            from autodeploy_cli.models.quant_config import read_scheme

            folder = Path(self.source) if self.is_local else None
            self._quant = read_scheme(folder, self.hf_config(), stored_quant_config(self.config.model),
                                      self.config.quant_config)
        return self._quant

    @property
    def checkpoint_quantized(self) -> bool:
        """Whether the weights come from a quantized checkpoint (read by `checkpoint()`, not by transformers)."""
        scheme = self.quant_scheme()
        return scheme is not None and not scheme.on_the_fly and not self.config.skip_loading_weights

    def kv_cache_dtype(self) -> str:
        """kv_cache_config.dtype, where `auto` becomes fp8 for a checkpoint with an FP8 KV cache."""
        kv = self.config.kv_cache_config.dtype
        scheme = self.quant_scheme()
        return "fp8" if kv == "auto" and scheme is not None and scheme.kv_cache == "fp8" else kv

    def checkpoint(self, device: torch.device | None = None) -> Any:
        """The quantized checkpoint's tensors by name (lazy; FP8 weights and float32 scales as stored, other floats
        in the model dtype), on `device`."""
        return self._checkpoint_headers().on(device or self.device, self.model_dtype())

    def _checkpoint_headers(self) -> Any:
        from autodeploy_cli.models.quant_weights import CheckpointTensors, tied_aliases

        if self._ckpt is None:  # the safetensors headers are read once
            folder = Path(self.source) if self.is_local else self._download()
            with torch.device("meta"):  # tied names only: any dtype (the model dtype may come from these headers)
                meta = self._auto_class().from_config(self.hf_config(), dtype=torch.float32,
                                                      trust_remote_code=self.config.trust_remote_code)
            self._ckpt = CheckpointTensors(folder, aliases=tied_aliases(meta))
        return self._ckpt

    def _download(self) -> Path:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(self.source, allow_patterns=["*.json", "*.safetensors"]))
        except Exception as e:  # noqa: BLE001 - hub errors of every kind end in the same advice
            raise self._load_error("weights", e) from None

    def skeleton(self, device: torch.device | None = None) -> nn.Module:
        """The HF model with its parameters on meta and its buffers (RoPE tables) computed on `device`."""
        from autodeploy_cli.models.quant_weights import params_on_meta

        with torch.device(device or self.device), params_on_meta():
            model = self._from_config()
        return model.eval()

    def weight_tensors(self, device: torch.device | None = None, model: nn.Module | None = None) -> Any:
        """Every tensor the graph may take, by name: the quantized checkpoint's (plus the model's buffers), else
        those of `model` or of the materialised HF model."""
        from autodeploy_cli.models.weights import source_tensors

        if not self.checkpoint_quantized:
            return source_tensors(model if model is not None else self.materialize(device))
        import collections

        buffers = dict(self.skeleton(device).named_buffers(remove_duplicate=False))
        return collections.ChainMap(buffers, self.checkpoint(device))

    def dequantize_hooks(self) -> dict[str, Any]:
        """Load hooks that hand a quantized checkpoint's FP8 weights to the graph dequantized, for every layer no
        quantization transform takes as FP8 (those replace the hook with their own)."""
        if not self.checkpoint_quantized:
            return {}
        from autodeploy_cli.models.quant_weights import real_weight

        scheme, dtype = self.quant_scheme(), self.model_dtype()
        ckpt = self._checkpoint_headers()
        return {name: (lambda t, n=name: real_weight(t, n, scheme, dtype)) for name in ckpt if ckpt.is_fp8(name)}

    def kv_scales(self) -> dict[int, tuple[float, float]]:
        """Layer index -> (k_scale, v_scale) from a quantized checkpoint (empty when it stores none)."""
        if not self.checkpoint_quantized:
            return {}
        from autodeploy_cli.models.quant_weights import kv_scales

        return kv_scales(self.checkpoint(torch.device("cpu")))

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

    def buffer_values(self) -> dict[str, torch.Tensor]:
        """The model's buffers computed on CPU (parameters stay on meta, so this costs the buffers only): what HF
        computes at init from the config (mask buffers such as GPT-Neo's tril `bias`, sinusoidal tables). Built once
        on first use: the mask classifier reads them where the meta graph holds no data."""
        if self._buffers is None:
            from autodeploy_cli.models.quant_weights import params_on_meta

            with params_on_meta():
                model = self._from_config()
            self._buffers = {n: b for n, b in model.named_buffers(remove_duplicate=False) if b.device.type != "meta"}
        return self._buffers

    def materialize(self, device: torch.device | None = None) -> nn.Module:
        """A real HF model on `device`: the checkpoint, or a seeded random init with `skip_loading_weights`.
        Its experts run a path that works for their shapes (models/hf_experts.py)."""
        from autodeploy_cli.models.hf_experts import pick_runnable_experts

        device = device or self.device
        if self.checkpoint_quantized:  # the unquantized reference: the checkpoint's weights dequantized
            from autodeploy_cli.models.quant_weights import dequantized_model

            return dequantized_model(self.skeleton(device), self.checkpoint(device), self.quant_scheme(),
                                     self.model_dtype())
        shared = self.hf_config()
        self._hf_config = copy.deepcopy(shared)  # the real model gets its own config: switching its experts
        try:  # implementation below must not reach the meta model's (the export's)
            model = self._materialize(device)
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
        model = self._load("weights", self._auto_class().from_pretrained, self.source, config=self.hf_config(),
                           dtype=self.model_dtype(), trust_remote_code=self.config.trust_remote_code,
                           **({"device_map": str(device)} if direct and device.type != "cpu" else {}))
        return model.to(device).eval()

    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        source = self.config.tokenizer or self.source
        if Path(source).is_dir() and not any((Path(source) / f).is_file() for f in TOKENIZER_FILES):
            raise ADError(
                f"Could not load the tokenizer from `{source}`: it holds none of the files a tokenizer is read from "
                f"({', '.join(TOKENIZER_FILES)}). Copy the model's tokenizer files there, or point `tokenizer` at "
                "a folder or hub id that has them."
            )
        return self._load("tokenizer", AutoTokenizer.from_pretrained, source,
                          trust_remote_code=self.config.trust_remote_code, **dict(self.config.tokenizer_kwargs))
