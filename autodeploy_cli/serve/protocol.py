"""The OpenAI protocol: request models (validated strictly, so a wrong type is a 400 naming the field), the error
body, and the legacy / chat logprob shapes.

Requests are parsed from the raw body (`parse`), not by FastAPI's validator, so every failure is an OpenAI-style
400 `{"error": {"message", "type": "invalid_request_error", "param", "code"}}` instead of a 422.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_LOGPROBS = 20  # the legacy API's limit (and vLLM's default)


class RequestError(Exception):
    """A bad request: HTTP `status` with an OpenAI error body naming `param`."""

    def __init__(self, message: str, param: Optional[str] = None, status: int = 400,
                 kind: str = "invalid_request_error", headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.message, self.param, self.status, self.kind, self.headers = message, param, status, kind, headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


class _Strict(BaseModel):
    # unknown fields are accepted and ignored (clients send `user`, `metadata`, ...); known ones are strictly typed
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: Optional[str] = None
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: Optional[int] = Field(None, ge=-1)  # -1, 0 or null: off
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    stop_token_ids: Optional[list[int]] = None
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    return_token_ids: bool = False  # extension (as vLLM's): choices also carry token_ids and prompt_token_ids

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: Optional[int] = Field(16, ge=1)
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False


class ChatMessage(_Strict):
    role: str
    content: Union[str, list[dict[str, Any]], None] = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)


class TokenizeRequest(_Strict):
    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[ChatMessage]] = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(_Strict):
    model: Optional[str] = None
    tokens: list[int]


_BRANCHES = {"str", "int", "float", "bool", "none", "dict"}
_SHAPES = {"prompt": "a string, a list of strings, a list of token ids or a list of token-id lists",
           "stop": "a string or a list of strings"}


def _param(loc: tuple) -> Optional[str]:
    """The field a pydantic error points at: `prompt`, `messages[0].content`, ... (union branches dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and ("[" in part or part in _BRANCHES or part.startswith("function-")):
            continue  # a union branch name such as `list[int]`
        else:
            out += ("." if out else "") + str(part)
    return out or None


def parse(model: type[BaseModel], body: bytes) -> Any:
    """The request model from a raw JSON body; RequestError(400) naming the first bad field."""
    try:
        return model.model_validate_json(body or b"")
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        if err["type"] == "json_invalid":
            raise RequestError(f"The request body is not valid JSON: {err.get('msg')}.", None) from None
        if err["type"] == "model_type" or not err["loc"]:
            raise RequestError("The request body must be a JSON object.", None) from None
        param = _param(tuple(err["loc"]))
        if err["type"] == "missing":
            raise RequestError(f"Missing required field `{param}`.", param) from None
        root = str(err["loc"][0])
        if root in _SHAPES:
            raise RequestError(f"Invalid value for `{root}`: it must be {_SHAPES[root]}.", root) from None
        raise RequestError(f"Invalid value for `{param}`: {err['msg']}.", param) from None


# --- logprob shapes ------------------------------------------------------------------------------------------------
def legacy_logprobs(entries: list[Any], token_text: Any, offset0: int = 0) -> dict[str, Any]:
    """The completions API's `{tokens, token_logprobs, top_logprobs, text_offset}` for TokenLogprob entries (None for
    an unscored first prompt token, whose logprob and top are null). token_text(id) -> the token's text."""
    tokens, lps, tops, offsets = [], [], [], []
    offset = offset0
    for e, tid in entries:
        text = token_text(tid)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        if e is None:
            lps.append(None)
            tops.append(None)
            continue
        lps.append(e.logprob)
        top = {token_text(t): v for t, v in e.top}
        top.setdefault(text, e.logprob)  # the chosen token is always listed (vLLM does the same)
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(entries: list[Any], token_text: Any) -> dict[str, Any]:
    """The chat API's `{"content": [{token, logprob, bytes, top_logprobs: [...]}]}`."""
    def one(tid: int, lp: float) -> dict[str, Any]:
        text = token_text(tid)
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**one(e.token_id, e.logprob), "top_logprobs": [one(t, v) for t, v in e.top]}
                        for e in entries]}
