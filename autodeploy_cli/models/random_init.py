"""Random weights for a model too big to materialise whole on one device: module by module.

Each module of the meta-device HF model is created on the device, initialised by the model's own `_init_weights`
(so the distributions are the model's: normal linears, unit norms, rotary frequencies), seeded from the config's
seed and the module's name, handed out, and freed before the next. Every rank, at any world size, draws the same
values for a module; they differ from a whole-model init (`materialize`), whose RNG runs through all modules in turn.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Iterator, Optional

import torch
from torch import nn


def model_bytes(meta: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*meta.parameters(), *meta.buffers()])


def _seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


class SeededModules(Mapping):
    """name -> tensor of a HF model, built one module at a time (the last module's tensors stay until the next)."""

    def __init__(self, meta: nn.Module, device: torch.device, seed: int, aliases: Optional[dict[str, str]] = None):
        self.meta, self.device, self.seed = meta, device, seed
        self.aliases = dict(aliases or {})
        self.owner: dict[str, tuple[str, str]] = {}  # tensor name -> (module name, attribute)
        for mod_name, module in meta.named_modules():
            for attr, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                self.owner[f"{mod_name}.{attr}" if mod_name else attr] = (mod_name, attr)
        self._current: Optional[str] = None

    def _key(self, name: str) -> str:
        return self.aliases.get(name, name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self.owner

    def __getitem__(self, name: str) -> torch.Tensor:
        key = self._key(name)
        if key not in self.owner:
            raise KeyError(name)
        mod_name, attr = self.owner[key]
        module = self.meta.get_submodule(mod_name) if mod_name else self.meta
        if self._current != mod_name:
            self._release()
            module.to_empty(device=self.device, recurse=False)
            with torch.no_grad():
                for t in module.parameters(recurse=False):
                    t.zero_()  # anything _init_weights leaves alone is zero, never stale memory
            torch.manual_seed(_seed(self.seed, mod_name))
            self.meta._init_weights(module)
            self._current = mod_name
        return getattr(module, attr).detach()

    def _release(self) -> None:
        if self._current is not None:
            module = self.meta.get_submodule(self._current) if self._current else self.meta
            module.to("meta")
            self._current = None

    def __iter__(self) -> Iterator[str]:
        yield from self.owner

    def __len__(self) -> int:
        return len(self.owner)
