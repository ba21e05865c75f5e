"""Words for config errors: what type a schema key expects, said the way a user writes YAML (no OmegaConf terms)."""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any, Optional

DEVICE_FORMS = "auto, cpu, cuda or cuda:N (N = a GPU index, e.g. cuda:1)"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def schema_type(root: type, dotted: str) -> Optional[Any]:
    """The annotated type of dotted key `dotted` under the dataclass `root` (None if unknown or free-form)."""
    node: Any = root
    for part in dotted.split("."):
        if not (isinstance(node, type) and dataclasses.is_dataclass(node)):
            return None
        node = typing.get_type_hints(node).get(part)
        if node is None:
            return None
    return node


def describe_type(tp: Any) -> str:
    """`List[int]` -> "a list of integers", `Optional[float]` -> "a number or null", ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return " or ".join(describe_type(a) for a in inner) + (" or null" if len(inner) < len(args) else "")
    if origin in (list, tuple):
        item = describe_type(args[0]) if args else "values"
        return "a list of " + _plural(item)
    if origin is dict:
        return "a mapping of keys to values"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(tp, f"a {getattr(tp, '__name__', str(tp))}")


def _plural(item: str) -> str:
    words = {"an integer": "integers", "a number": "numbers", "a string": "strings", "true or false": "booleans"}
    return words.get(item, item)


def example_of(tp: Any) -> str:
    """A YAML example of a value of type `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return example_of(next(a for a in args if a is not type(None)))
    if origin in (list, tuple):
        item = args[0] if args else int
        return {int: "[2, 7]", float: "[0.5, 1.0]", str: "[a, b]"}.get(item, "[...]")
    return {int: "8", float: "0.5", bool: "true", str: "text"}.get(tp, "...")


def describe_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "null" if value is None else type(value).__name__


def valid_device(value: str) -> bool:
    return bool(_DEVICE.fullmatch(str(value)))
