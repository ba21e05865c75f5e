"""User-facing errors: one exception type, caught once at the CLI and printed as one paragraph."""

from __future__ import annotations

import difflib
from typing import Iterable


class ADError(Exception):
    """An error caused by the user's input (config, model id, files, requests).

    The message is one paragraph that says what was wrong, where, and how to fix it.
    """


def closest(word: str, candidates: Iterable[str], n: int = 1) -> list[str]:
    """Return up to `n` candidates closest to `word` (empty if nothing is reasonably close)."""
    cands = list(candidates)
    found = difflib.get_close_matches(word, cands, n=n, cutoff=0.5)
    if not found:
        lowered = {c.lower(): c for c in cands}
        found = [lowered[m] for m in difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.4)]
    return found


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A ' Did you mean `x`?' suffix, or '' when nothing is close."""
    found = closest(word, candidates)
    return f" Did you mean `{found[0]}`?" if found else ""
