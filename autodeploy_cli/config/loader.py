"""Resolve one config from its layers.

Precedence, lowest first: built-in default.yaml < model-registry layers for the model < `--config` files (in the
order given) < command-line overrides. Dicts merge per key; lists and scalars are replaced. Shortcuts
(`attn_backend`, ...) write into their transform's options.
"""

from __future__ import annotations

import copy
import functools
import dataclasses
import typing
from pathlib import Path
from typing import Any, Iterable, Sequence

from autodeploy_cli.config.compat import AnchorCompat, CompatReport
from autodeploy_cli.config.describe import (
    DEVICE_FORMS, describe_type, describe_value, example_of, schema_type, valid_device,
)
from autodeploy_cli.config.layers import Layer, deep_merge, default_pipeline, get_path, parse_overrides, set_path
from autodeploy_cli.config.layers import to_yaml as _dict_to_yaml
from autodeploy_cli.config.schema import BACKEND_CHOICES, CHOICES, SHORTCUTS, TRANSFORM_BACKENDS, ADConfig
from autodeploy_cli.errors import ADError, did_you_mean, shown


def _escape_interpolations(value: Any) -> Any:
    """Make `${` literal: user strings (prompts, paths) are data, never OmegaConf interpolations."""
    if isinstance(value, str):
        return value.replace("${", "\\${")
    if isinstance(value, dict):
        return {k: _escape_interpolations(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape_interpolations(v) for v in value]
    return value


def _schema_keys(path: str) -> list[str]:
    """Valid keys of the schema dataclass at dotted `path` ('' = top level); [] for free-form dicts."""
    node: Any = ADConfig
    for part in filter(None, path.split(".")):
        node = typing.get_type_hints(node).get(part)
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return []
    return [f.name for f in dataclasses.fields(node)]


def _check_shapes(data: Any, root: type, prefix: str) -> None:
    """Mappings where the schema has a section or a dict, lists where it has a list (OmegaConf raises a bare
    TypeError without the key for a mapping given to a list)."""
    if not isinstance(data, dict):
        return
    hints = typing.get_type_hints(root)
    for key, value in data.items():
        tp = hints.get(key) if isinstance(key, str) else None
        if tp is None:
            continue
        dotted = prefix + key
        origin = typing.get_origin(tp)
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = typing.get_origin(args[0]) if origin is typing.Union and len(args) == 1 else origin
        section = isinstance(tp, type) and dataclasses.is_dataclass(tp)
        if value is None:
            if origin is not typing.Union and (section or origin in (dict, list)):
                raise ADError(f"`{shown(dotted)}` cannot be null: give {describe_type(tp) if not section else 'its keys'} "
                              "or remove the line to keep the default.")
            continue
        if (section or inner is dict) and not isinstance(value, dict):
            raise _type_error(dotted, {key: value} if not prefix else data_at(prefix, key, value))
        if inner in (list, tuple) and not isinstance(value, list):
            raise _type_error(dotted, data_at(prefix, key, value))
        if section:
            _check_shapes(value, tp, dotted + ".")


def data_at(prefix: str, key: str, value: Any) -> dict:
    """A dict holding `value` at dotted `prefix + key` (so _type_error can show what the user gave)."""
    out: dict = {}
    set_path(out, prefix + key, value)
    return out


def _type_error(full_key: str, data: dict) -> ADError:
    """One paragraph for a value of the wrong type: the key, what it got, what it expects, an example."""
    tp = schema_type(ADConfig, full_key)
    got = get_path(data, full_key, None)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        names = [f.name for f in dataclasses.fields(tp)]
        return ADError(f"`{shown(full_key)}` is a section of keys, not a single value (got `{shown(got)}`): set its keys, e.g. "
                       f"`{full_key}.{names[0]}=...` (its keys: {', '.join(names)}).")
    if tp is None:
        return ADError(f"Wrong type for config key `{shown(full_key)}`: give a value of the type its documentation names.")
    return ADError(f"Wrong type for config key `{shown(full_key)}`: got `{shown(got)}` ({describe_value(got)}); it expects "
                   f"{describe_type(tp)}, e.g. `{full_key}={example_of(tp)}`.")


def top_level_keys() -> list[str]:
    """The config keys at the top level of the schema."""
    return _schema_keys("")


@functools.lru_cache(maxsize=1)
def _structured_schema() -> Any:
    """OmegaConf's typed view of the schema, built once (merge returns a new config; this one is never changed)."""
    from omegaconf import OmegaConf

    return OmegaConf.structured(ADConfig)


def validate_schema(data: dict) -> ADConfig:
    """Check `data` against the schema; return the typed config. Errors name the bad key and the closest valid one."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    _check_shapes(data, ADConfig, "")
    try:
        merged = OmegaConf.merge(_structured_schema(), _escape_interpolations(data))
        cfg = OmegaConf.to_object(merged)
    except ConfigKeyError as e:
        full_key = str(getattr(e, "full_key", "") or getattr(e, "key", ""))
        parent, _, leaf = full_key.rpartition(".")
        valid = _schema_keys(parent)
        where = f"under `{shown(parent)}`" if parent else "at the top level"
        raise ADError(
            f"Unknown config key `{shown(full_key)}`.{did_you_mean(leaf, valid)} Valid keys {where}: "
            f"{', '.join(valid)}. Fix or remove it in your --config file or override."
        ) from None
    except ValidationError as e:
        raise _type_error(str(getattr(e, "full_key", "") or "?"), data) from None
    except OmegaConfBaseException as e:
        raise ADError(f"Invalid config: {str(e).splitlines()[0]}") from None
    assert isinstance(cfg, ADConfig)
    if not valid_device(cfg.device):
        raise ADError(f"Invalid value `{shown(cfg.device)}` for `device`: use {DEVICE_FORMS}.")
    for key, choices in CHOICES.items():
        value = get_path(dataclasses.asdict(cfg), key)
        if value not in choices:
            raise ADError(
                f"Invalid value `{shown(value)}` for `{key}`: choose one of {', '.join(choices)}."
                f"{did_you_mean(str(value), choices)}"
            )
    check_transform_entries(cfg.transforms)
    return cfg


def check_transform_entries(transforms: dict[str, Any]) -> None:
    """The cheap, torch-free checks of `transforms`: entries are mappings and backend options name a backend. Names
    and every other option are validated against the transform registry when the pipeline is built."""
    for name, entry in transforms.items():
        if entry is not None and not isinstance(entry, dict):
            raise ADError(f"`transforms.{shown(name)}` must be a mapping of options, got {entry!r}.")
        for (tname, option), family in TRANSFORM_BACKENDS.items():
            value = (entry or {}).get(option) if tname == name else None
            allowed = BACKEND_CHOICES[family]
            if value is not None and value not in allowed:
                raise ADError(f"Invalid value `{shown(value)}` for `transforms.{name}.{option}`: choose one of "
                              f"{', '.join(allowed)}.{did_you_mean(str(value), allowed)}")


def apply_shortcuts(data: dict, explicit: dict) -> dict:
    """Explicitly set shortcuts overwrite their transform option; then every shortcut mirrors the option."""
    out = copy.deepcopy(data)
    transforms = out.setdefault("transforms", {})
    for key, (tname, option) in SHORTCUTS.items():
        value = get_path(explicit, key)
        family = TRANSFORM_BACKENDS.get((tname, option))
        if value is not None and family is not None and value not in BACKEND_CHOICES[family]:
            allowed = BACKEND_CHOICES[family]
            raise ADError(f"Invalid value `{shown(value)}` for `{key}`: choose one of {', '.join(allowed)}."
                          f"{did_you_mean(str(value), allowed)}")
        if value is not None and tname in transforms:
            transforms[tname][option] = copy.deepcopy(value)
        if tname in transforms and option in transforms[tname]:
            set_path(out, key, copy.deepcopy(transforms[tname][option]))
    return out


def resolve_layers(layers: Iterable[Layer]) -> dict:
    """Deep-merge layers in order (lowest precedence first) and apply shortcuts; no validation."""
    merged: dict = {}
    explicit: dict = {}
    for i, (_, data) in enumerate(layers):
        merged = deep_merge(merged, data)
        if i > 0:  # shortcuts count as "set" in any layer above the built-in defaults
            explicit = deep_merge(explicit, data)
    _check_shapes(merged, ADConfig, "")
    return apply_shortcuts(merged, explicit)


def resolve_with_report(
    config_files: Sequence[str | Path] = (),
    overrides: Sequence[str] | dict = (),
    model: str | None = None,
) -> tuple[ADConfig, CompatReport]:
    """The config (default.yaml < registry layers < config files < overrides, `model` last if given) and the report
    of how other tools' keys were read (notes and warnings). Transform options are validated by the pipeline."""
    from model_registry import registry_layers

    compat = AnchorCompat()
    user_layers: list[Layer] = []
    for path in config_files:
        user_layers.extend(compat.expand_file(path))
    over = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    if model:
        over = deep_merge(over, {"model": model})
    if over:
        user_layers.append(("command line", compat.normalize_layer(over, "command line")))

    base = default_pipeline()
    chosen_model = base.get("model") or ADConfig.model
    for _, data in user_layers:
        chosen_model = data.get("model", chosen_model)
    layers: list[Layer] = [("default.yaml", base)]
    layers += registry_layers(str(chosen_model))
    layers += user_layers
    data = compat.finalize(resolve_layers(layers))
    return validate_schema(data), compat.report


def resolve(
    config_files: Sequence[str | Path] = (),
    overrides: Sequence[str] | dict = (),
    model: str | None = None,
) -> ADConfig:
    """`resolve_with_report` without the report (its warnings are logged as they are found)."""
    return resolve_with_report(config_files, overrides, model)[0]


def to_yaml(cfg: ADConfig) -> str:
    return _dict_to_yaml(dataclasses.asdict(cfg))
