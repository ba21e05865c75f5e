"""What the runtime passes around: sampling parameters, a request's state, and what a step reports back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

PLACEHOLDER = -1  # all_token_ids slot of a token sampled on the GPU that the host has not read yet


@dataclass
class SamplingParams:
    max_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy
    top_k: Optional[int] = None  # None or 0 = off
    top_p: float = 1.0
    seed: Optional[int] = None  # per-request sampling seed (None: drawn from the engine's seeded RNG)
    stop: list[str] = field(default_factory=list)  # stop strings (cut from the text)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    detokenize: bool = True  # False: token ids only, Completion.text stays "" and no tokenizer is loaded
    min_tokens: int = 0  # EOS / stop tokens are masked and stops ignored until this many tokens are generated
    logprobs: Optional[int] = None  # k >= 0: each generated token's logprob plus the k most likely (None: off)
    prompt_logprobs: Optional[int] = None  # k >= 0: each prompt token's logprob (the first: None) plus the top k

    @classmethod
    def from_config(cls, sc: Any) -> "SamplingParams":
        """From config.schema.SamplingConfig (or any object with the same fields)."""
        return cls(max_tokens=sc.max_tokens, temperature=sc.temperature, top_k=sc.top_k, top_p=sc.top_p,
                   seed=sc.seed, stop=list(sc.stop), stop_token_ids=list(sc.stop_token_ids),
                   ignore_eos=sc.ignore_eos)


@dataclass(eq=False)  # identity comparison: `req in running` must not compare token lists (O(B^2 L) per step)
class Request:
    request_id: int
    prompt_token_ids: list[int]
    sampling: SamplingParams
    prompt: Optional[str] = None
    all_token_ids: list[int] = field(default_factory=list)  # prompt + generated (PLACEHOLDER: a token in flight)
    output_token_ids: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose K/V are in the cache
    pages: list[int] = field(default_factory=list)
    slot: Optional[int] = None  # state slot of stateful mixers while running (None: not running, or no states)
    resumed: bool = False  # preempted at least once
    num_preemptions: int = 0
    finished: bool = False
    finish_reason: Optional[str] = None
    error: Optional[str] = None
    text: Optional[str] = None
    seed: int = 0  # the request's seed: with a token's index, it gives the random number that token is drawn with
    logprobs: list["TokenLogprob"] = field(default_factory=list)  # per output token (when sampling.logprobs is set)
    prompt_logprobs: list[Optional["TokenLogprob"]] = field(default_factory=list)  # per prompt token, [0] = None

    def __post_init__(self) -> None:
        if not self.all_token_ids:
            self.all_token_ids = list(self.prompt_token_ids)

    @property
    def num_pending(self) -> int:
        """Tokens not yet in the cache (the whole context after a preemption, else a prompt chunk or 1)."""
        return len(self.all_token_ids) - self.num_computed


@dataclass
class TokenLogprob:
    """A token's log-probability under the model (raw logits, before temperature / top-k / top-p) and the `k` most
    likely tokens at that position, most likely first."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class StepOutput:
    request_id: int
    new_token_ids: list[int]
    finished: bool
    finish_reason: Optional[str]  # stop | length | error | abort (when finished)
    error: Optional[str]
    logprobs: Optional[list[TokenLogprob]] = None  # one per new token (sampling.logprobs set)
    prompt_logprobs: Optional[list[Optional[TokenLogprob]]] = None  # with the first token (prompt_logprobs set)


@dataclass
class Completion:
    request_id: int
    prompt: Optional[str]
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: Optional[str]
    error: Optional[str]
    logprobs: Optional[list[TokenLogprob]] = None
    prompt_logprobs: Optional[list[Optional[TokenLogprob]]] = None


@dataclass
class StopPolicy:
    """When a request ends after a new token: stop token, EOS, stop string, max_tokens, or max_seq_len."""

    eos_token_ids: set[int]
    max_seq_len: int
    decode: Callable[[list[int]], str]  # token ids -> text (for stop strings)

    def reason(self, r: Request, tok: int, pos: int) -> Optional[str]:
        """"stop" / "length" / None for token `tok` at all_token_ids[pos]; a stop string also sets r.text (cut)."""
        sp = r.sampling
        early = len(r.output_token_ids) <= sp.min_tokens  # within min_tokens only the length limits end it
        if not early and (tok in sp.stop_token_ids or (not sp.ignore_eos and tok in self.eos_token_ids)):
            return "stop"
        if not early and sp.stop and self._hit_stop_string(r):
            return "stop"
        if len(r.output_token_ids) >= sp.max_tokens or pos + 1 >= self.max_seq_len:
            return "length"  # max_tokens reached, or prompt + output fill max_seq_len
        return None

    def _hit_stop_string(self, r: Request) -> bool:
        text = self.decode(r.output_token_ids)
        cut = min((p for p in (text.find(s) for s in r.sampling.stop if s) if p >= 0), default=-1)
        if cut < 0:
            return False
        r.text = text[:cut]
        return True


@dataclass
class EngineStats:
    """Wall time of steps with prefill tokens (prefill) and of decode-only steps (decode)."""

    steps: int = 0
    prefill_steps: int = 0
    prefill_tokens: int = 0
    prefill_time_s: float = 0.0
    decode_steps: int = 0
    decode_tokens: int = 0
    decode_time_s: float = 0.0
    num_preemptions: int = 0
    max_batch: int = 0


def text_prompt_error(prompt: str) -> Optional[str]:
    """Why a text prompt cannot be run (None: it can): empty (checked before any chat template adds tokens), or not
    valid UTF-8 (a command line or file holding other bytes arrives with surrogate escapes)."""
    if prompt == "":
        return "empty prompt: give at least one token (an empty text is refused before any chat template adds some)"
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = prompt[e.start].encode("utf-8", "surrogateescape")
        return (f"the prompt is not valid UTF-8 (byte 0x{bad.hex()} at character {e.start}); give UTF-8 text or "
                "token ids")
    return None
