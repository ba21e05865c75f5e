"""Named export patches: small context managers applied around torch.export for HF quirks.

Each patch is registered under a name and toggled in config: `transforms.export_to_gm.patches.<name>=false`.
A patch factory receives the model being exported and returns a context manager.
"""

from __future__ import annotations

from typing import Callable, ContextManager

from torch import nn

from autodeploy_cli.errors import ADError, did_you_mean

PatchFactory = Callable[[nn.Module], ContextManager]
_PATCHES: dict[str, PatchFactory] = {}
_DOCS: dict[str, str] = {}


def register_export_patch(name: str, doc: str) -> Callable[[PatchFactory], PatchFactory]:
    def deco(fn: PatchFactory) -> PatchFactory:
        _PATCHES[name] = fn
        _DOCS[name] = doc
        return fn

    return deco


def registered_patches() -> dict[str, str]:
    """name -> one-line description."""
    _load_library()
    return dict(_DOCS)


def _load_library() -> None:
    import autodeploy_cli.export_patch_library  # noqa: F401 - registers the built-in patches
    import autodeploy_cli.export_patch_rope  # noqa: F401
    import autodeploy_cli.export_patch_moe  # noqa: F401


def build_patches(toggles: dict[str, bool], model: nn.Module) -> list[tuple[str, ContextManager]]:
    """Context managers of the enabled patches (every registered patch is on unless toggled off)."""
    _load_library()
    for name in toggles:
        if name not in _PATCHES:
            raise ADError(
                f"Unknown export patch `{name}` in transforms.export_to_gm.patches.{did_you_mean(name, _PATCHES)} "
                f"Registered patches: {', '.join(sorted(_PATCHES))}."
            )
    return [(name, fn(model)) for name, fn in _PATCHES.items() if toggles.get(name, True)]

