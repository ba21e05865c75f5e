"""The report of one config resolve (notes: keys mapped or dropped as no-ops; warnings: keys ignored) and the rules
compat.py applies to other tools' keys: rename onto ad's key, drop with a note or one warning, map backend names."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from autodeploy_cli.config import anchor_keys as K
from autodeploy_cli.config.loader import get_path, set_path
from autodeploy_cli.errors import ADError

_MISSING = object()


@dataclass
class CompatReport:
    """Warnings (a key was ignored) and notes (a key was mapped, or dropped as a no-op) of one resolve."""

    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def warn(self, msg: str) -> None:
        if msg not in self.warnings:  # one warning per key, however many layers repeat it
            self.warnings.append(msg)
            _logger().warning(msg)

    def note(self, msg: str) -> None:
        if msg not in self.notes:
            self.notes.append(msg)
            _logger().info(msg)


_report = CompatReport()


def _logger():
    from autodeploy_cli.log import get_logger

    return get_logger()


def begin() -> CompatReport:
    """Start a new report (the loader calls this at the start of every resolve)."""
    global _report
    _report = CompatReport()
    return _report


def last_report() -> CompatReport:
    """The warnings and notes recorded since the last `begin()`."""
    return _report


# --- file expansion -------------------------------------------------------------------------------------------------


def fmt_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _same(value: Any, harmless: tuple) -> bool:
    # `1 == True` in Python: compare types too
    return any(type(value) is type(h) and value == h for h in harmless)


def move_key(root: dict, parent: dict, old: str, new: str, label: str, source: str) -> None:
    """Rename `parent[old]` onto the dotted `new` under `root`; refuse two different values in one layer."""
    value = parent.pop(old)
    existing = get_path(root, new, _MISSING)
    if existing is not _MISSING and existing != value:
        raise ADError(
            f"{source} sets both `{label}: {fmt_value(value)}` (AutoDeploy's name) and `{new}: {fmt_value(existing)}`; "
            f"keep one of them."
        )
    set_path(root, new, value)
    _report.note(f"`{label}` (AutoDeploy) -> `{new}`.")


def ignore_key(parent: dict, key: str, label: str, rule: tuple[tuple, str]) -> None:
    value = parent.pop(key)
    harmless, reason = rule
    if _same(value, harmless):
        _report.note(f"`{label}: {fmt_value(value)}` dropped: {reason}.")
    else:
        _report.warn(f"`{label}: {fmt_value(value)}` is ignored: {reason}.")


def check_backend(container: dict, key: str, label: str, tname: str, option: str) -> None:
    """Map AutoDeploy v1 backend names; drop a documented AutoDeploy backend that ad lacks (one warning)."""
    value = container.get(key)
    if not isinstance(value, str):
        return
    if value in K.BACKEND_ALIASES:
        old, value = value, K.BACKEND_ALIASES[value]
        container[key] = value
        _report.note(f"`{label}: {old}` (AutoDeploy v1 name) -> `{value}`.")
    choices = _choices(tname, option)
    if choices is None:
        if value in K.TRTLLM_ONLY_BACKENDS:
            container.pop(key)
            _report.warn(f"`{label}: {value}` is ignored: it needs TensorRT-LLM's C++ kernels; ad keeps its own "
                         f"`transforms.{tname}.{option}`.")
        return
    if value in choices or value not in K.BACKEND_VALUES:
        return  # supported, or not an AutoDeploy value (then validation names the valid ones)
    container.pop(key)
    _report.warn(
        f"`{label}: {value}` is ignored: ad's `{tname}` has no such backend (choices: {', '.join(choices)}); ad "
        f"keeps `transforms.{tname}.{option}` from its defaults or lower config layers (default "
        f"`{_default_option(tname, option)}`)."
    )


def _choices(tname: str, option: str) -> tuple | None:
    """ad's valid values for a transform option; None when the transform is not registered or the option is free."""
    from autodeploy_cli.pipeline.registry import get_transform_class, registered_names

    if tname not in registered_names():
        return None
    choices = getattr(get_transform_class(tname).options_cls, "choices", {}) or {}
    return tuple(choices[option]) if option in choices else None


def _default_option(tname: str, option: str) -> Any:
    from autodeploy_cli.config.loader import default_pipeline
    from autodeploy_cli.pipeline.registry import get_transform_class

    entry = (default_pipeline().get("transforms") or {}).get(tname) or {}
    if option in entry:
        return entry[option]
    for f in dataclasses.fields(get_transform_class(tname).options_cls):
        if f.name == option and f.default is not dataclasses.MISSING:
            return f.default
    return None
