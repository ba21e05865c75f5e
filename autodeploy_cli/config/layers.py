"""The dict helpers every layer of `ad` uses: YAML files in, deep merge, dotted paths, command-line overrides."""

from __future__ import annotations

import copy
import functools
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml

from autodeploy_cli.errors import ADError, shown

Layer = tuple[str, dict]  # (source description, data)


def default_pipeline() -> dict:
    """The built-in default.yaml (the transform pipeline and top-level defaults); a fresh copy each call."""
    return copy.deepcopy(_default_pipeline())


@functools.lru_cache(maxsize=1)
def _default_pipeline() -> dict:
    text = resources.files("autodeploy_cli.config").joinpath("default.yaml").read_text()
    return yaml.safe_load(text) or {}


def load_yaml_file(path: str | Path) -> dict:
    p = Path(path)
    if p.is_dir():
        raise ADError(f"Config file `{path}` is a directory, not a YAML file. Give the path of a .yaml file to --config.")
    if not p.is_file():
        raise ADError(
            f"Config file `{path}` does not exist (resolved to {p.resolve()}). "
            "Check the path given to --config, or drop the flag to use the built-in defaults."
        )
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ADError(f"Config file `{path}` is not valid YAML: {yaml_error_text(e)}. Fix the syntax and run "
                      "again.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ADError(f"Config file `{path}` must hold a mapping of keys to values at the top, not {type(data).__name__}.")
    return data


def yaml_error_text(e: Exception) -> str:
    """A YAML parser error on one line: where (line, column) and what was wrong."""
    mark = getattr(e, "problem_mark", None)
    where = f"at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
    opened = f" ({context} at line {cmark.line + 1}, column {cmark.column + 1})" if context and cmark else ""
    return f"{where}: {problem}{opened}"


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
                f"Cannot read the override `{shown(item)}`: write it as `key.sub=value` or `--key.sub-name=value` "
                "(for example `max_seq_len=1024` or `--model-kwargs.num-hidden-layers=2`)."
            )
        if dashed:
            key = key.replace("-", "_")
        if not key or key.startswith(".") or key.endswith("."):
            raise ADError(f"The override `{shown(item)}` has an empty key; write it as `key.sub=value`.")
        set_path(out, key, parse_value(raw))
        i += 1
    return out


def to_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, width=120)
