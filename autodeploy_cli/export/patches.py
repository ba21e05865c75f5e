"""Named export patches: small context managers applied around torch.export for HF quirks.

Each patch lives in `export/library/<name>.py`, is registered under its file name and toggled in config: `transforms.export_to_gm.patches.<name>=false`.
A patch factory receives the model being exported and returns a context manager. A patch may also register an
`applies(model) -> bool` check: a patch that does not apply to a model is left out (and not listed as on).
"""

from __future__ import annotations

from typing import Callable, ContextManager, Optional

from torch import nn

from autodeploy_cli.errors import ADError, did_you_mean

PatchFactory = Callable[[nn.Module], ContextManager]
_PATCHES: dict[str, PatchFactory] = {}
_DOCS: dict[str, str] = {}
_APPLIES: dict[str, Callable[[nn.Module], bool]] = {}


def register_export_patch(name: str, doc: str, applies: Optional[Callable[[nn.Module], bool]] = None
                          ) -> Callable[[PatchFactory], PatchFactory]:
    def deco(fn: PatchFactory) -> PatchFactory:
        _PATCHES[name] = fn
        _DOCS[name] = doc
        if applies is not None:
            _APPLIES[name] = applies
        return fn

    return deco


def registered_patches() -> dict[str, str]:
    """name -> one-line description."""
    _load_library()
    return dict(_DOCS)


def _load_library() -> None:
    """Import every module of `export/library/` once (each registers its patch; file name == patch name)."""
    import importlib
    import pkgutil

    from autodeploy_cli.export import library

    for info in pkgutil.iter_modules(library.__path__):
        importlib.import_module(f"{library.__name__}.{info.name}")


def registered_factories() -> dict[str, PatchFactory]:
    """name -> patch factory, in registration order (the export cache hashes their source files)."""
    _load_library()
    return dict(_PATCHES)


def check_toggles(toggles: dict[str, bool]) -> None:
    """Refuse a toggle that names no registered patch."""
    _load_library()
    for name in toggles:
        if name not in _PATCHES:
            raise ADError(
                f"Unknown export patch `{name}` in transforms.export_to_gm.patches.{did_you_mean(name, _PATCHES)} "
                f"Registered patches: {', '.join(sorted(_PATCHES))}."
            )


def build_patches(toggles: dict[str, bool], model: nn.Module) -> list[tuple[str, ContextManager]]:
    """Context managers of the enabled patches that apply to `model` (every registered patch is on unless toggled
    off)."""
    check_toggles(toggles)
    on = [name for name in _PATCHES if toggles.get(name, True)]
    return [(name, _PATCHES[name](model)) for name in on if name not in _APPLIES or _APPLIES[name](model)]

