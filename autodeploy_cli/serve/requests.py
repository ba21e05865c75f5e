"""From a validated OpenAI request to engine requests: prompts to token ids, sampling parameters per choice, and
every limit checked up front, so a bad request is a 400 naming the field and never reaches the engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from autodeploy_cli.runtime.request import SamplingParams
from autodeploy_cli.serve.protocol import ChatCompletionRequest, CompletionRequest, RequestError


@dataclass
class Prompt:
    token_ids: list[int]
    text: Optional[str]  # the text as given (None for token ids: decoded on demand for echo)


@dataclass
class Limits:
    """What the front end checks against (read once from the built engine)."""

    max_seq_len: int
    vocab_size: Optional[int]
    check: Any  # engine.check_request(token_ids, sampling) -> Optional[str]
    has_tokenizer: bool = True


def check_model(name: Optional[str], served: list[str]) -> None:
    if name is not None and name not in served:
        raise RequestError(f"The model `{name}` is not served here; this server serves {', '.join(served)} "
                           "(GET /v1/models lists them).", "model")


def completion_prompts(req: CompletionRequest, tokenizer: Any) -> list[Prompt]:
    p = req.prompt
    if isinstance(p, str):
        items: list[Any] = [p]
    elif p and all(isinstance(x, int) for x in p):
        items = [list(p)]
    else:
        items = list(p)
    if not items:
        raise RequestError("`prompt` is empty: give a string, a list of strings or token ids.", "prompt")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append(Prompt(encode(tokenizer, item, "prompt"), item))
        else:
            out.append(Prompt(list(item), None))
        if not out[-1].token_ids:
            raise RequestError(f"`prompt[{i}]` is empty: give at least one token.", "prompt")
    return out


def encode(tokenizer: Any, text: str, param: str) -> list[int]:
    if tokenizer is None:
        raise RequestError("This model has no tokenizer, so text cannot be encoded; send token ids.", param)
    return list(tokenizer(text)["input_ids"])


def chat_prompt(req: ChatCompletionRequest, tokenizer: Any) -> Prompt:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise RequestError("This model's tokenizer has no chat template; use /v1/completions.", "messages")
    messages = [m.model_dump(exclude_none=True) for m in req.messages]
    try:
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    except Exception as e:  # noqa: BLE001 - a template that rejects these messages (e.g. roles out of order)
        raise RequestError(f"The chat template rejected the messages: {e}", "messages") from None
    ids = out["input_ids"] if hasattr(out, "keys") else out
    return Prompt(list(ids), None)


def _check_prompt(ids: list[int], max_tokens: int, limits: Limits, param: str) -> None:
    v = limits.vocab_size
    if v is not None and (min(ids) < 0 or max(ids) >= v):
        raise RequestError(f"`{param}` has token ids outside [0, {v}) (the model's vocabulary).", param)
    n, cap = len(ids), limits.max_seq_len
    if n >= cap:
        raise RequestError(f"The prompt has {n} tokens; this model's context (max_seq_len) is {cap} tokens and "
                           "the completion needs at least one. Shorten the prompt.", param)
    if n + max_tokens > cap:
        raise RequestError(f"This model's context (max_seq_len) is {cap} tokens, but {n + max_tokens} were asked "
                           f"for ({n} in the prompt, {max_tokens} in the completion). Lower `max_tokens` to at "
                           f"most {cap - n}.", "max_tokens")


def _unsupported(req: Any) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise RequestError(f"`{name}` is not supported by this server; leave it at 0.", name)


def sampling_for(req: Any, max_tokens: int, index: int, logprobs: Optional[int],
                 prompt_logprobs: Optional[int]) -> SamplingParams:
    """The engine's sampling parameters for choice `index` (a seed gives choice i the seed + i: reproducible and
    distinct choices)."""
    stops = req.stops()
    return SamplingParams(
        max_tokens=max_tokens, temperature=req.temperature, top_k=None if req.top_k in (None, -1, 0) else req.top_k,
        top_p=req.top_p, seed=None if req.seed is None else req.seed + index, stop=stops,
        stop_token_ids=list(req.stop_token_ids or []), ignore_eos=req.ignore_eos, detokenize=bool(stops),
        min_tokens=req.min_tokens, logprobs=logprobs, prompt_logprobs=prompt_logprobs)


def plan(req: Any, prompts: list[Prompt], limits: Limits, default_max: Optional[int], logprobs: Optional[int],
         prompt_logprobs: Optional[int]) -> list[tuple[Prompt, SamplingParams]]:
    """(prompt, sampling) per choice, prompt-major (choice index = prompt index * n + i), all checked."""
    _unsupported(req)
    if req.stops() and not limits.has_tokenizer:
        raise RequestError("Stop strings need the model's tokenizer, and this model has none; use "
                           "`stop_token_ids`.", "stop")
    out = []
    for p in prompts:
        max_tokens = default_max if default_max is not None else limits.max_seq_len - len(p.token_ids)
        _check_prompt(p.token_ids, max(max_tokens, 1), limits, "prompt" if isinstance(req, CompletionRequest)
                      else "messages")
        if req.min_tokens > max_tokens:
            raise RequestError(f"`min_tokens` ({req.min_tokens}) is larger than `max_tokens` ({max_tokens}).",
                               "min_tokens")
        for i in range(req.n):
            sp = sampling_for(req, max_tokens, len(out), logprobs, prompt_logprobs)
            reason = limits.check(p.token_ids, sp)
            if reason:
                param = next((f for f in ("max_tokens", "temperature", "top_p", "top_k", "logprobs", "prompt")
                              if f in reason), None)
                raise RequestError(f"Invalid request: {reason}.", param)
            out.append((p, sp))
    return out
