"""Reading a safetensors checkpoint one slice at a time (sharded loading: each rank reads only its part).

`CheckpointTensors(folder)` maps tensor names to `LazyTensor`s; indexing one (`t[0:512]`, `t[:, 1024:2048]`) reads
just those elements from the file (safetensors slices are memory-mapped reads), so no rank ever holds a full
tensor it only needs part of. Buffers the model computes rather than stores (rotary inv_freq, embedding scales)
are rebuilt by `computed_buffers` from the config, module by module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator, Optional

import torch


class LazyTensor:
    """One checkpoint tensor, not read yet: `shape`, and indexing reads the selected part (on the CPU)."""

    def __init__(self, handle: Any, key: str):
        self._slice = handle.get_slice(key)
        self.key = key
        self.shape = torch.Size(self._slice.get_shape())

    def __getitem__(self, index: Any) -> torch.Tensor:
        if index is Ellipsis or index == ():
            return self._slice[:] if len(self.shape) else self._slice[()]
        return self._slice[index]

    def __repr__(self) -> str:
        return f"LazyTensor({self.key!r}, shape={list(self.shape)})"


def safetensors_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> file of a checkpoint folder (from its index, else by opening each *.safetensors)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return {name: folder / file for name, file in weight_map.items()}
    from safetensors import safe_open

    out: dict[str, Path] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            out.update({k: path for k in f.keys()})
    return out


class CheckpointTensors(Mapping):
    """name -> LazyTensor over a folder of safetensors files; `aliases` name tied weights (lm_head -> embedding)."""

    def __init__(self, folder: Path, aliases: Optional[dict[str, str]] = None, extra: Optional[dict] = None):
        self.files = safetensors_files(folder)
        self.aliases = {k: v for k, v in (aliases or {}).items() if k not in self.files and v in self.files}
        self.extra = dict(extra or {})  # computed buffers
        self._handles: dict[Path, Any] = {}

    def _key(self, name: str) -> str:
        return self.aliases.get(name, name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.extra or self._key(name) in self.files)

    def __getitem__(self, name: str) -> Any:
        if name in self.extra:
            return self.extra[name]
        key = self._key(name)
        if key not in self.files:
            raise KeyError(name)
        path = self.files[key]
        if path not in self._handles:
            from safetensors import safe_open

            self._handles[path] = safe_open(str(path), framework="pt", device="cpu")
        return LazyTensor(self._handles[path], key)

    def __iter__(self) -> Iterator[str]:
        yield from self.extra
        yield from self.files
        yield from self.aliases

    def __len__(self) -> int:
        return len(self.extra) + len(self.files) + len(self.aliases)


def computed_buffers(meta_model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The buffers `names` of a HF model built on the meta device, computed on the CPU by the model's own weight
    initialisation of the module owning each (transformers recomputes rotary frequencies and scales there)."""
    out: dict[str, torch.Tensor] = {}
    init = getattr(meta_model, "_init_weights", None)
    for name in names:
        owner_name, _, leaf = name.rpartition(".")
        owner = meta_model.get_submodule(owner_name) if owner_name else meta_model
        if getattr(owner, leaf, None) is None or getattr(owner, leaf).device.type == "meta":
            owner.to_empty(device="cpu", recurse=False)
            if init is None:
                raise KeyError(name)
            init(owner)
        out[name] = getattr(owner, leaf)
    return out


def checkpoint_folder(source: str, is_local: bool) -> Optional[Path]:
    """The local folder holding `source`'s safetensors files (the HF cache for a hub id), or None."""
    if is_local:
        folder = Path(source)
    else:
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(source, allow_patterns=["*.safetensors", "*.json"]))
        except Exception:  # noqa: BLE001 - not downloadable (offline, gated): the HF loader reports it
            return None
    return folder if any(folder.glob("*.safetensors")) else None
