"""The model registry: `models.yaml` maps model names to layered config files in `configs/`.

No `__version__` here and no transformers import: transformers probes for a package called `kernels`, and none of
our top-level packages may look like a third-party distribution.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

REGISTRY_DIR = Path(__file__).resolve().parent


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
    layers = []
    for fname in entry.get("yaml_extra", []):
        path = REGISTRY_DIR / "configs" / fname
        layers.append((f"model_registry/configs/{fname}", yaml.safe_load(path.read_text()) or {}))
    return layers


def local_model_dir(name: str) -> Path | None:
    """The shipped HF folder of a built-in model, if it has one."""
    entry = get_entry(name)
    if entry and entry.get("local_dir"):
        return REGISTRY_DIR / entry["local_dir"]
    return None
