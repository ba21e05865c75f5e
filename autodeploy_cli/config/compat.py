"""Reading config files into layers.

A `--config` file becomes one or more layers (lowest precedence first). This is the single place that knows
about other tools' file shapes, so the rest of `ad` sees only its own schema.
"""

from __future__ import annotations

from pathlib import Path

from autodeploy_cli.config.loader import Layer, load_yaml_file


def normalize_layer(data: dict, source: str) -> dict:
    """Map one layer onto `ad`'s schema (identity for files already written for `ad`)."""
    return data


def expand_file(path: str | Path) -> list[Layer]:
    """Load a config file as layers."""
    return [(str(path), normalize_layer(load_yaml_file(path), str(path)))]
