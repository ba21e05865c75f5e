"""User-facing errors: one exception type, caught once at the CLI and printed as one paragraph."""

from __future__ import annotations

import difflib
from typing import Iterable, Optional


class ADError(Exception):
    """An error caused by the user's input (config, model id, files, requests).

    The message is one paragraph that says what was wrong, where, and how to fix it.
    """


def closest(word: str, candidates: Iterable[str], n: int = 1) -> list[str]:
    """Up to `n` candidates that look like a typo of `word` (similarity >= 0.7, case ignored), or that start with it
    (an abbreviation of 4+ characters); empty when nothing is that close: a far-off suggestion misleads."""
    cands = list(candidates)
    lowered = {c.lower(): c for c in cands}
    found = [lowered[m] for m in difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.7)]
    if not found and len(word) >= 4:
        found = [c for c in cands if c.lower().startswith(word.lower())][:n]
    return found


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A ' Did you mean `x`?' suffix, or '' when nothing is close."""
    found = closest(word, candidates)
    return f" Did you mean `{found[0]}`?" if found else ""


def shown(value: object, limit: int = 60) -> str:
    """A user's value as it may appear inside a one-paragraph message: control characters escaped, long values cut."""
    text = value if isinstance(value, str) else repr(value) if not isinstance(value, (int, float, bool)) else str(value)
    if any(ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF for c in text):
        text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(err: BaseException, default: Optional[str] = None) -> str:
    """The first line of an exception's message (when empty: `default`, else its type name): one-paragraph errors."""
    text = str(err).strip()
    if text:
        return text.splitlines()[0]
    return type(err).__name__ if default is None else default
