"""The `ad` logger: level from AUTO_DEPLOY_LOG_LEVEL, and a per-transform prefix set by the pipeline runner."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
from typing import Iterator

_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}
_prefix: contextvars.ContextVar[str] = contextvars.ContextVar("ad_log_prefix", default="")


class _PrefixFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = _prefix.get()
        level = record.levelname[0]
        msg = record.getMessage()
        return f"[AUTO-DEPLOY] [{level}] {prefix + ' ' if prefix else ''}{msg}"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (test runners and tools swap it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def log_level_from_env() -> int:
    name = os.environ.get("AUTO_DEPLOY_LOG_LEVEL", "INFO").upper()
    return _LEVELS.get(name, logging.INFO)


def get_logger() -> logging.Logger:
    """The shared logger; its handler is attached on first use (no import-time side effects)."""
    logger = logging.getLogger("autodeploy")
    if not getattr(logger, "_ad_configured", False):
        handler = _StderrHandler()
        handler.setFormatter(_PrefixFormatter())
        logger.addHandler(handler)
        logger.propagate = False
        logger._ad_configured = True  # type: ignore[attr-defined]
    logger.setLevel(log_level_from_env())
    return logger


@contextlib.contextmanager
def log_prefix(prefix: str) -> Iterator[None]:
    """Prefix every log line inside the block (nested prefixes are joined with a space)."""
    outer = _prefix.get()
    token = _prefix.set(f"{outer} {prefix}".strip())
    try:
        yield
    finally:
        _prefix.reset(token)
