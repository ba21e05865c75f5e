"""The report of one config resolve (notes: keys mapped or dropped as no-ops; warnings: keys ignored) and the rules
the reader applies to other tools' keys: rename onto ad's key, drop with a note or one warning, map backend names.

Everything here is data about ad's own config (schema choices, default.yaml): nothing imports torch or the pipeline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from autodeploy_cli.config.compat import keys as K
from autodeploy_cli.config.layers import default_pipeline, get_path, set_path
from autodeploy_cli.config.schema import BACKEND_CHOICES, TRANSFORM_BACKENDS
from autodeploy_cli.errors import ADError, shown

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


def _logger():
    from autodeploy_cli.log import get_logger

    return get_logger()


def our_transforms() -> dict[str, Any]:
    """ad's transforms: every registered one has an entry in default.yaml (a test keeps the two equal)."""
    return default_pipeline().get("transforms") or {}


def fmt_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return shown(json.dumps(value, default=str), 120)
    return shown(value, 120)


def _same(value: Any, harmless: tuple) -> bool:
    # `1 == True` in Python: compare types too
    return any(type(value) is type(h) and value == h for h in harmless)


def move_key(report: CompatReport, root: dict, parent: dict, old: str, new: str, label: str, source: str) -> None:
    """Rename `parent[old]` onto the dotted `new` under `root`; refuse two different values in one layer."""
    value = parent.pop(old)
    existing = get_path(root, new, _MISSING)
    if existing is not _MISSING and existing != value:
        raise ADError(
            f"{source} sets both `{label}: {fmt_value(value)}` (AutoDeploy's name) and `{new}: {fmt_value(existing)}`; "
            f"keep one of them."
        )
    set_path(root, new, value)
    report.note(f"`{label}` (AutoDeploy) -> `{new}`.")


def ignore_key(report: CompatReport, parent: dict, key: str, label: str, rule: tuple[tuple, str]) -> None:
    value = parent.pop(key)
    harmless, reason = rule
    if _same(value, harmless):
        report.note(f"`{label}: {fmt_value(value)}` dropped: {reason}.")
    else:
        report.warn(f"`{label}: {fmt_value(value)}` is ignored: {reason}.")


def check_backend(report: CompatReport, container: dict, key: str, label: str, tname: str, option: str) -> None:
    """Map AutoDeploy v1 backend names; drop a documented AutoDeploy backend that ad lacks (one warning)."""
    value = container.get(key)
    if not isinstance(value, str):
        return
    if TRANSFORM_BACKENDS.get((tname, option)) == "mla" and value in K.MLA_BACKEND_ALIASES:
        old, value = value, K.MLA_BACKEND_ALIASES[value]
        container[key] = value
        report.note(f"`{label}: {old}` (AutoDeploy's MLA backend name) -> `{value}`.")
    elif value in K.BACKEND_ALIASES:
        old, value = value, K.BACKEND_ALIASES[value]
        container[key] = value
        report.note(f"`{label}: {old}` (AutoDeploy v1 name) -> `{value}`.")
    choices = backend_choices(tname, option)
    if choices is None:
        if value in K.TRTLLM_ONLY_BACKENDS:
            container.pop(key)
            report.warn(f"`{label}: {value}` is ignored: it needs TensorRT-LLM's C++ kernels; ad keeps its own "
                        f"`transforms.{tname}.{option}`.")
        return
    if value in choices or value not in K.BACKEND_VALUES:
        return  # supported, or not an AutoDeploy value (then validation names the valid ones)
    container.pop(key)
    default = (our_transforms().get(tname) or {}).get(option)
    report.warn(
        f"`{label}: {value}` is ignored: ad's `{tname}` has no such backend (choices: {', '.join(choices)}); ad "
        f"keeps `transforms.{tname}.{option}` from its defaults or lower config layers"
        + (f" (default `{default}`)." if default is not None else ".")
    )


def backend_choices(tname: str, option: str) -> Optional[tuple[str, ...]]:
    """ad's valid values for a transform's backend option; None when the transform is not ours or the option is
    not a backend choice."""
    if tname not in our_transforms():
        return None
    family = TRANSFORM_BACKENDS.get((tname, option))
    return None if family is None else BACKEND_CHOICES[family]
