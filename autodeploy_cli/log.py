"""The `ad` logger: level from AUTO_DEPLOY_LOG_LEVEL (default WARNING), and a per-transform prefix set by the runner.

The per-transform lines (`[stage=S, transform=T] [SUMMARY] ...`, the anchor's format) are INFO: shown with
`-v` or AUTO_DEPLOY_LOG_LEVEL=INFO. A listener may also watch INFO records without showing them (the stderr handler
alone applies the user's level): on a terminal, `build_progress()` turns them into one live line (transform n/N,
stage, elapsed) instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
from typing import Callable, Iterator, Optional

from autodeploy_cli.errors import ADError

LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}
DEFAULT_LEVEL = "WARNING"
_prefix: contextvars.ContextVar[str] = contextvars.ContextVar("ad_log_prefix", default="")
_listener: Optional[logging.Handler] = None


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
    """The level AUTO_DEPLOY_LOG_LEVEL names (default WARNING); an unknown name is a user error."""
    name = os.environ.get("AUTO_DEPLOY_LOG_LEVEL", DEFAULT_LEVEL).strip().upper() or DEFAULT_LEVEL
    if name not in LEVELS:
        raise ADError(f"AUTO_DEPLOY_LOG_LEVEL={os.environ.get('AUTO_DEPLOY_LOG_LEVEL')} is not a log level: use "
                      f"{', '.join(LEVELS)} (default {DEFAULT_LEVEL}; INFO shows every transform's log lines).")
    return LEVELS[name]


def get_logger() -> logging.Logger:
    """The shared logger; its handler is attached on first use (no import-time side effects)."""
    logger = logging.getLogger("autodeploy")
    if not getattr(logger, "_ad_configured", False):
        handler = _StderrHandler()
        handler.setFormatter(_PrefixFormatter())
        logger.addHandler(handler)
        logger.propagate = False
        logger._ad_configured = True  # type: ignore[attr-defined]
        logger._ad_stderr = handler  # type: ignore[attr-defined]
    level = log_level_from_env()
    logger._ad_stderr.setLevel(level)  # type: ignore[attr-defined]
    logger.setLevel(min(level, logging.INFO) if _listener is not None else level)
    return logger


@contextlib.contextmanager
def listening(on_record: Callable[[logging.LogRecord], None]) -> Iterator[None]:
    """Call `on_record` for every INFO-or-higher record while inside the block (whatever the shown level)."""
    global _listener

    class _Listener(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            on_record(record)

    logger = get_logger()
    _listener = _Listener(logging.INFO)
    logger.addHandler(_listener)
    get_logger()
    try:
        yield
    finally:
        logger.removeHandler(_listener)
        _listener = None
        get_logger()


@contextlib.contextmanager
def log_prefix(prefix: str) -> Iterator[None]:
    """Prefix every log line inside the block (nested prefixes are joined with a space)."""
    outer = _prefix.get()
    token = _prefix.set(f"{outer} {prefix}".strip())
    try:
        yield
    finally:
        _prefix.reset(token)


# --- the build progress display -------------------------------------------------------------------------------------
def wanted() -> bool:
    """Only on a terminal, when the log lines are not shown anyway and the user did not ask for quiet."""
    level = os.environ.get("AUTO_DEPLOY_LOG_LEVEL", "WARNING").upper()
    return sys.stderr.isatty() and level in ("WARNING", "") and not os.environ.get("AD_QUIET")


@contextlib.contextmanager
def build_progress() -> Iterator[None]:
    """A rich progress line driven by the runner's per-transform records (nothing when not wanted)."""
    if not wanted():
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("building"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                        TimeElapsedColumn(), console=Console(stderr=True), transient=True)
    task = progress.add_task("", total=None)

    def on_record(record: logging.LogRecord) -> None:
        step = getattr(record, "ad_step", None)
        if step is not None:
            position, total, stage, name = step
            progress.update(task, completed=position - 1, total=total, description=f"{stage}: {name}")

    with progress, listening(on_record):
        yield
