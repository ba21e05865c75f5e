"""Text out of token ids as they stream: a constant amount of decoding per token, and stop strings never leaked.

`IncrementalText.push(ids)` returns the new text that is safe to send: it decodes only a short window (the tokens
since the last emitted boundary, with the window's prefix decoded too, so tokenizers that drop a leading space
or merge bytes across tokens come out right), holds back an incomplete UTF-8 character, and, with stop strings,
holds back the last `len(longest stop) - 1` characters (they may be the start of a stop string the engine will cut).
`finish(final_text)` returns whatever of the final text (the engine's, cut at a stop string) was not sent yet.
"""

from __future__ import annotations

from typing import Any, Sequence


class IncrementalText:
    def __init__(self, tokenizer: Any, stops: Sequence[str] = ()):
        self.tok = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # window start: tokens before it are final text
        self._read = 0  # tokens whose text is already in self.text
        self.text = ""  # everything decoded so far
        self.sent = 0  # characters of self.text already returned
        self._hold = max((len(s) for s in stops if s), default=1) - 1

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def push(self, new_ids: Sequence[int]) -> str:
        self.ids.extend(new_ids)
        if self.tok is None:
            return ""
        before = self._decode(self.ids[self._prefix: self._read])
        now = self._decode(self.ids[self._prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.text += now[len(before):]
            self._prefix, self._read = self._read, len(self.ids)
        safe = max(len(self.text) - self._hold, self.sent)
        delta = self.text[self.sent: safe]
        self.sent = safe
        return delta

    def finish(self, final_text: str) -> str:
        """The rest of `final_text` after what was sent (the whole remainder when it does not extend it)."""
        sent = self.text[: self.sent]
        rest = final_text[len(sent):] if final_text.startswith(sent) else ""
        self.sent = len(self.text)
        return rest


def token_text(tokenizer: Any, token_id: int) -> str:
    """One token's text (for logprobs); `<id>` without a tokenizer."""
    if tokenizer is None:
        return f"<{token_id}>"
    return tokenizer.decode([token_id], skip_special_tokens=False)
