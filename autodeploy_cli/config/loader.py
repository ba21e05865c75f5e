"""Resolve one config from its layers.

Precedence, lowest first: built-in default.yaml < model-registry layers for the model < `--config` files (in the
order given) < command-line overrides. Dicts merge per key; lists and scalars are replaced. Shortcuts
(`attn_backend`, ...) write into their transform's options.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from autodeploy_cli.config.schema import CHOICES, SHORTCUTS, ADConfig
from autodeploy_cli.errors import ADError, did_you_mean

Layer = tuple[str, dict]  # (source description, data)


def default_pipeline() -> dict:
    """The built-in default.yaml (the transform pipeline and top-level defaults)."""
    text = resources.files("autodeploy_cli.config").joinpath("default.yaml").read_text()
    return yaml.safe_load(text) or {}


def load_yaml_file(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ADError(
            f"Config file `{path}` does not exist (resolved to {p.resolve()}). "
            "Check the path given to --config, or drop the flag to use the built-in defaults."
        )
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ADError(f"Config file `{path}` is not valid YAML: {e}. Fix the syntax and run again.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ADError(f"Config file `{path}` must hold a mapping of keys to values at the top, not {type(data).__name__}.")
    return data


def deep_merge(base: dict, other: dict) -> dict:
    """Merge `other` over `base` (new dict): dicts merge per key, everything else is replaced."""
    out = dict(base)
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_path(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def get_path(data: dict, dotted: str, default: Any = None) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def parse_value(text: str) -> Any:
    """Parse an override value as YAML (ints, floats, bools, lists, null); fall back to the raw string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(args: Sequence[str]) -> dict:
    """Turn `key.sub=value`, `--key.sub-name=value` and `--key.sub-name value` into one nested dict.

    Dashes in `--` style keys become underscores (values are left alone).
    """
    out: dict = {}
    items = list(args)
    i = 0
    while i < len(items):
        item = items[i]
        dashed = item.startswith("--")
        body = item[2:] if dashed else item
        if "=" in body:
            key, raw = body.split("=", 1)
        elif dashed and i + 1 < len(items) and not items[i + 1].startswith("--"):
            key, raw = body, items[i + 1]
            i += 1
        elif dashed:
            key, raw = body, "true"
        else:
            raise ADError(
                f"Cannot read the override `{item}`: write it as `key.sub=value` or `--key.sub-name=value` "
                "(for example `max_seq_len=1024` or `--model-kwargs.num-hidden-layers=2`)."
            )
        if dashed:
            key = key.replace("-", "_")
        if not key or key.startswith(".") or key.endswith("."):
            raise ADError(f"The override `{item}` has an empty key; write it as `key.sub=value`.")
        set_path(out, key, parse_value(raw))
        i += 1
    return out


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


def validate_schema(data: dict) -> ADConfig:
    """Check `data` against the schema; return the typed config. Errors name the bad key and the closest valid one."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    try:
        merged = OmegaConf.merge(OmegaConf.structured(ADConfig), _escape_interpolations(data))
        cfg = OmegaConf.to_object(merged)
    except ConfigKeyError as e:
        full_key = str(getattr(e, "full_key", "") or getattr(e, "key", ""))
        parent, _, leaf = full_key.rpartition(".")
        valid = _schema_keys(parent)
        where = f"under `{parent}`" if parent else "at the top level"
        raise ADError(
            f"Unknown config key `{full_key}`.{did_you_mean(leaf, valid)} Valid keys {where}: "
            f"{', '.join(valid)}. Fix or remove it in your --config file or override."
        ) from None
    except ValidationError as e:
        full_key = getattr(e, "full_key", "?")
        first_line = str(e).splitlines()[0]
        raise ADError(f"Wrong type for config key `{full_key}`: {first_line}. Give a value of the expected type.") from None
    except OmegaConfBaseException as e:
        raise ADError(f"Invalid config: {str(e).splitlines()[0]}") from None
    assert isinstance(cfg, ADConfig)
    for key, choices in CHOICES.items():
        value = get_path(dataclasses.asdict(cfg), key)
        if value not in choices:
            raise ADError(
                f"Invalid value `{value}` for `{key}`: choose one of {', '.join(choices)}."
                f"{did_you_mean(str(value), choices)}"
            )
    return cfg


def apply_shortcuts(data: dict, explicit: dict) -> dict:
    """Explicitly set shortcuts overwrite their transform option; then every shortcut mirrors the option."""
    out = copy.deepcopy(data)
    transforms = out.setdefault("transforms", {})
    for key, (tname, option) in SHORTCUTS.items():
        value = get_path(explicit, key)
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
    return apply_shortcuts(merged, explicit)


def resolve(
    config_files: Sequence[str | Path] = (),
    overrides: Sequence[str] | dict = (),
    model: str | None = None,
) -> ADConfig:
    """Resolve the full config: default.yaml < registry layers < config files < overrides (< `model` if given)."""
    from autodeploy_cli.config import compat
    from model_registry import registry_layers

    compat.begin()  # collects the warnings about other tools' keys for this resolve
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
    cfg = validate_schema(data)
    from autodeploy_cli.pipeline.registry import validate_transform_entries

    validate_transform_entries(cfg.transforms)
    return cfg


def to_yaml(cfg: ADConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, width=120)
