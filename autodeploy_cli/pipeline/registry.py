"""Transform registry: name -> class, discovery of the `transforms` package, and validation of config entries."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, TypeVar

from autodeploy_cli.errors import ADError, did_you_mean
from autodeploy_cli.pipeline.interface import BaseTransform, Stage, TransformOptions, options_field_names

T = TypeVar("T", bound=type[BaseTransform])
_REGISTRY: dict[str, type[BaseTransform]] = {}
_discovered = False


def register(name: str) -> Callable[[T], T]:
    """Class decorator: register a transform under `name` (its YAML key and file name)."""

    def deco(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise RuntimeError(f"transform {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def discover() -> None:
    """Import every module of the `transforms` package once, so each registers itself."""
    global _discovered
    if _discovered:
        return
    import transforms

    for info in pkgutil.iter_modules(transforms.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"transforms.{info.name}")
    _discovered = True


def registered_names() -> list[str]:
    discover()
    return sorted(_REGISTRY)


def get_transform_class(name: str) -> type[BaseTransform]:
    discover()
    if name not in _REGISTRY:
        raise ADError(
            f"Unknown transform `{name}` in `transforms`.{did_you_mean(name, _REGISTRY)} "
            f"Registered transforms: {', '.join(sorted(_REGISTRY))}."
        )
    return _REGISTRY[name]


def build_options(name: str, raw: dict[str, Any]) -> TransformOptions:
    """Validate one `transforms.<name>` entry against the transform's options dataclass."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    cls = get_transform_class(name)
    opts_cls = cls.options_cls
    if not isinstance(raw, dict):
        raise ADError(f"`transforms.{name}` must be a mapping of options, got {raw!r}.")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(opts_cls), raw)
        options = OmegaConf.to_object(merged)
    except ConfigKeyError as e:
        key = str(getattr(e, "key", "") or "")
        valid = options_field_names(opts_cls)
        raise ADError(
            f"Unknown option `transforms.{name}.{key}`.{did_you_mean(key, valid)} "
            f"Options of `{name}`: {', '.join(valid)}."
        ) from None
    except OmegaConfBaseException as e:
        raise ADError(
            f"Wrong type for `transforms.{name}.{getattr(e, 'full_key', '?')}`: {str(e).splitlines()[0]}."
        ) from None
    stages = [s.value for s in Stage]
    if options.stage not in stages:
        raise ADError(
            f"`transforms.{name}.stage` is `{options.stage or '(missing)'}`; choose one of {', '.join(stages)}."
            f"{did_you_mean(options.stage, stages)}"
        )
    for key, allowed in getattr(opts_cls, "choices", {}).items():
        value = getattr(options, key)
        if value is not None and value not in allowed:
            raise ADError(
                f"Invalid value `{value}` for `transforms.{name}.{key}`: choose one of {', '.join(allowed)}."
                f"{did_you_mean(str(value), allowed)}"
            )
    return options


def validate_transform_entries(transforms: dict[str, Any]) -> dict[str, TransformOptions]:
    return {name: build_options(name, raw or {}) for name, raw in transforms.items()}


def ordered_entries(transforms: dict[str, Any]) -> list[tuple[str, TransformOptions]]:
    """Entries sorted by stage; within a stage the config's order holds (stable sort)."""
    opts = validate_transform_entries(transforms)
    return sorted(opts.items(), key=lambda item: Stage(item[1].stage).order)
