"""The model registry: `models.yaml` maps model names to layered config files in `configs/` and to the stored HF
architecture values in `architectures/` (so a registered hub id builds offline with its exact shapes).

No `__version__` here and no transformers import: transformers probes for a package called `kernels`, and none of
our top-level packages may look like a third-party distribution. This module imports neither torch nor
transformers (`ad models` must stay fast).
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

REGISTRY_DIR = Path(__file__).resolve().parent
ARCH_DIR = REGISTRY_DIR / "architectures"
CONFIGS_DIR = REGISTRY_DIR / "configs"

PARAMS_FILE = REGISTRY_DIR / "params.yaml"

# keys of an architecture entry that are registry bookkeeping, not HF config values
ARCH_META_KEYS = ("base",)


@lru_cache(maxsize=1)
def load_registry() -> dict[str, dict[str, Any]]:
    """name -> entry, in file order."""
    data = yaml.safe_load((REGISTRY_DIR / "models.yaml").read_text()) or {}
    return {entry["name"]: entry for entry in data.get("models", [])}


def get_entry(name: str) -> dict[str, Any] | None:
    return load_registry().get(name)


def registry_layers(name: str) -> list[tuple[str, dict]]:
    """The config layers of a registry entry (empty for models not in the registry)."""
    entry = get_entry(name)
    if entry is None:
        return []
    return [(f"model_registry/configs/{fname}", load_config_layer(fname)) for fname in entry.get("yaml_extra", [])]


@lru_cache(maxsize=None)
def _config_layer(fname: str) -> dict:
    return yaml.safe_load((CONFIGS_DIR / fname).read_text()) or {}


def load_config_layer(fname: str) -> dict:
    """One shared layer file of `configs/` (a fresh copy)."""
    return copy.deepcopy(_config_layer(fname))


def local_model_dir(name: str) -> Path | None:
    """The shipped HF folder of a built-in model, if it has one."""
    entry = get_entry(name)
    if entry and entry.get("local_dir"):
        return REGISTRY_DIR / entry["local_dir"]
    return None


# --- stored architectures ------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def load_architectures() -> dict[str, tuple[str, dict]]:
    """arch name -> (file it lives in, raw entry) over all `architectures/*.yaml` (names are global)."""
    out: dict[str, tuple[str, dict]] = {}
    for path in sorted(ARCH_DIR.glob("*.yaml")):
        for name, values in (yaml.safe_load(path.read_text()) or {}).items():
            if name in out:
                raise ValueError(f"architecture `{name}` is defined in both {out[name][0]} and {path.name}")
            out[name] = (path.name, values or {})
    return out


def resolve_architecture(arch: str) -> dict[str, Any]:
    """The full values of architecture `arch`: its `base` chain merged (the entry's own keys win), meta keys kept."""
    archs = load_architectures()
    chain: list[dict] = []
    name: str | None = arch
    while name is not None:
        if name not in archs:
            raise KeyError(f"unknown architecture `{name}` (referenced from `{arch}`)")
        values = archs[name][1]
        chain.append(values)
        name = values.get("base")
        if len(chain) > 16:
            raise ValueError(f"architecture `{arch}`: `base` chain loops")
    merged: dict[str, Any] = {}
    for values in reversed(chain):
        merged.update(copy.deepcopy(values))
    merged.pop("base", None)
    return merged


def hf_architecture(name: str) -> dict[str, Any] | None:
    """The stored HF config values (`model_type` + config.json keys) of a registry entry; None if it has none."""
    entry = get_entry(name)
    if entry is None or not entry.get("arch"):
        return None
    values = resolve_architecture(entry["arch"])
    for key in ARCH_META_KEYS:
        values.pop(key, None)
    return values


@lru_cache(maxsize=1)
def load_params() -> dict[str, int]:
    """arch name -> parameter count, as computed on the meta model by `tools/update_params.py`."""
    return yaml.safe_load(PARAMS_FILE.read_text()) or {} if PARAMS_FILE.is_file() else {}


def entry_params(name: str) -> int | None:
    """The stored parameter count of an entry (None when it has no stored architecture)."""
    entry = get_entry(name)
    if entry is None or not entry.get("arch"):
        return None
    return load_params().get(entry["arch"])


def families() -> list[str]:
    """Families in registry order (each listed once)."""
    return list(dict.fromkeys(e.get("family", "?") for e in load_registry().values()))


def num_layers(name: str) -> int | None:
    """Decoder layers of an entry: stored architecture, or the shipped folder's config.json."""
    values = hf_architecture(name)
    if values is None and local_model_dir(name) is not None:
        import json

        values = json.loads((local_model_dir(name) / "config.json").read_text())  # type: ignore[operator]
    return None if values is None else values.get("num_hidden_layers")


@lru_cache(maxsize=1)
def _quant_configs() -> dict[str, Any]:
    path = REGISTRY_DIR / "quant_configs.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def stored_quant_config(name: str) -> dict[str, Any] | None:
    """The stored quantization config of a registry entry (`quant_config: <key>` in models.yaml): {"file":
    "hf_quant_config.json" | "config.json", "content": ...} as the published checkpoint ships it; None if none."""
    entry = get_entry(name)
    if entry is None or not entry.get("quant_config"):
        return None
    return copy.deepcopy(_quant_configs()[entry["quant_config"]])
