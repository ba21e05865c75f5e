"""The built-in runtime (`runtime: demollm`): requests in, tokens out, one forward per step over a flattened batch.

The engine is handed a built model and its cache interface (`autodeploy_cli.llm.build_engine` builds both):

    rid = engine.add_request(token_ids, SamplingParams(max_tokens=16))
    while engine.has_unfinished():
        for out in engine.step(): ...                      # StepOutput per request that got a token / finished
    engine.generate(["Hello"], SamplingParams())          # or all at once -> [Completion]

A bad request (empty, longer than max_seq_len, invalid sampling values, ...) finishes with an error at the next step;
the others are not affected.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch

from autodeploy_cli.config.schema import effective_max_num_tokens
from autodeploy_cli.errors import ADError
from autodeploy_cli.ops.cache import CachedSequenceInterface
from autodeploy_cli.runtime import sampler
from autodeploy_cli.runtime.overlap import InFlight, TokenPipeline
from autodeploy_cli.runtime.pages import PageManager
from autodeploy_cli.runtime.request import Completion, Request, SamplingParams, StepOutput, StopPolicy
from autodeploy_cli.runtime.scheduler import Scheduler
from autodeploy_cli.runtime.slots import SlotManager

__all__ = ["Completion", "Engine", "EngineStats", "SamplingParams", "StepOutput"]


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


class Engine:
    def __init__(self, model: Any, iface: CachedSequenceInterface, config: Any, tokenizer: Any = None,
                 build_result: Any = None, eos_token_ids: Sequence[int] = (), vocab_size: Optional[int] = None,
                 tokenizer_loader: Optional[Callable[[], Any]] = None):
        if not iface.caches and not iface.states:
            raise ADError("The built model has no KV cache, so the runtime cannot run it. Keep "
                          "`transforms.insert_cached_attention` and `transforms.initialize_cache` enabled.")
        self.model = model
        self.iface = iface
        self.config = config
        self.build_result = build_result  # what the builder made (records, report); opaque to the runtime
        self._tokenizer = tokenizer
        self._tokenizer_loader = tokenizer_loader
        self.eos_token_ids = set(int(t) for t in eos_token_ids)
        self.vocab_size = vocab_size
        self.max_seq_len = iface.info.max_seq_len
        self.max_num_tokens = min(effective_max_num_tokens(config.max_batch_size, config.max_seq_len,
                                                           config.max_num_tokens), iface.info.max_num_tokens)
        self.chunked_prefill = bool(config.enable_chunked_prefill)
        self.pages = PageManager(iface.num_pages, iface.page_size)
        stops = StopPolicy(self.eos_token_ids, self.max_seq_len, self._decode)
        # state slots of stateful mixers: one per running sequence (the interface's last slot is CUDA-graph scratch)
        self.slots = SlotManager(iface.num_slots - 1) if iface.state_specs else None
        self.scheduler = Scheduler(self.pages, iface.info.max_batch_size, self.max_num_tokens, self.chunked_prefill,
                                   stops, self.slots)
        self.stats = EngineStats()
        self._rng = random.Random(config.seed)
        self._next_id = 0
        self._errors: list[StepOutput] = []
        self._finished: dict[int, Completion] = {}
        self._tokens = TokenPipeline(iface.device, iface.info.max_batch_size, self.max_seq_len)

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (loaded on first use, so token-id-only use needs none)."""
        if self._tokenizer is None and self._tokenizer_loader is not None:
            self._tokenizer = self._tokenizer_loader()
            tok_eos = getattr(self._tokenizer, "eos_token_id", None)
            if tok_eos is not None:
                self.eos_token_ids.add(int(tok_eos))
        return self._tokenizer

    @property
    def kv_capacity_tokens(self) -> int:
        """Size of the KV page pool in tokens."""
        return self.pages.num_pages * self.pages.page_size

    # --- requests ----------------------------------------------------------------------------------------------
    def _request_error(self, ids: list[int], sp: SamplingParams) -> Optional[str]:
        if not ids:
            return "empty prompt: give at least one token"
        reason = sampler.validate(sp)
        if reason:
            return f"invalid sampling parameters: {reason}"
        if self.vocab_size is not None and (min(ids) < 0 or max(ids) >= self.vocab_size):
            return f"prompt token ids must be in [0, {self.vocab_size}) (the model's vocabulary)"
        n = len(ids)
        if n > self.max_seq_len:
            return (f"prompt has {n} tokens, more than max_seq_len={self.max_seq_len}; shorten it or raise "
                    "`max_seq_len`")
        if not self.chunked_prefill and n > self.max_num_tokens:
            return (f"prompt has {n} tokens, more than max_num_tokens={self.max_num_tokens} per step; set "
                    "`enable_chunked_prefill=true` or raise `max_num_tokens`")
        longest = min(n + sp.max_tokens - 1, self.max_seq_len)
        if self.pages.pages_for(longest) > self.pages.num_pages:
            return (f"the request may reach {longest} tokens but the KV cache holds {self.kv_capacity_tokens}; "
                    "lower max_tokens or give the cache more room (transforms.resize_kv_cache)")
        return None

    def add_request(self, prompt_token_ids: Sequence[int], sampling: Optional[SamplingParams] = None,
                    prompt: Optional[str] = None) -> int:
        """Queue a request; returns its id. Invalid requests finish with an error at the next step."""
        sp = sampling or SamplingParams()
        rid = self._next_id
        self._next_id += 1
        ids = [int(t) for t in prompt_token_ids]
        seed = sp.seed if sp.seed is not None else self._rng.getrandbits(63)
        req = Request(rid, ids, sp, prompt=prompt, generator=torch.Generator().manual_seed(seed))
        error = self._request_error(ids, sp)
        if error:
            self._errors.append(self._fail(req, error))
        else:
            self.scheduler.add(req)
        return rid

    def abort(self, request_id: int) -> bool:
        """Cancel a waiting or running request: its pages return to the pool at once and it finishes with reason
        "abort" (a token of it still in flight is dropped). False if no such unfinished request."""
        for r in [*self.scheduler.running, *self.scheduler.waiting]:
            if r.request_id == request_id:
                self.scheduler.finish(r, "abort")
                self._finished[r.request_id] = self._completion(r)
                return True
        return False

    def has_unfinished(self) -> bool:
        return bool(self._errors) or self.scheduler.has_work() or self._tokens.busy()

    # --- one step: schedule -> run -> postprocess ---------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        """Schedule, run one forward over the flattened batch, sample, and report what changed.

        Greedy steps overlap with the host: the step's tokens stay on the GPU (its argmax feeds the next step's
        input_ids there), and the host reads them after launching the next step, so the outputs of step N are
        returned by the call that launches step N+1. A request that stops on a token is computed one token past
        its end at most; that token is dropped. Sampled (temperature > 0) steps read their logits at once.
        """
        t0 = time.perf_counter()
        outputs, self._errors = self._errors, []
        batch = self.scheduler.schedule(self._tokens.holds_token)
        if not batch:
            outputs += self._postprocess(None)
            return outputs or self._unschedulable()
        # prefill (context) sequences first, then decodes (one new token after a cached context)
        prefill = [(r, n) for r, n in batch if not (n == 1 and r.num_computed > 0)]
        decode = [(r, n) for r, n in batch if n == 1 and r.num_computed > 0]
        flight = self._run(prefill + decode, len(prefill))
        outputs += self._postprocess(flight)
        self._account(prefill, decode, len(flight.ready) if flight else 0, time.perf_counter() - t0)
        return outputs

    def _run(self, batch: list[tuple[Request, int]], num_prefill: int) -> Optional[InFlight]:
        """One forward over `batch`, then the next token of every request whose context is now cached."""
        self.iface.info.set_batch(
            [r.all_token_ids[r.num_computed: r.num_computed + n] for r, n in batch],
            [r.num_computed for r, _ in batch], [r.pages for r, _ in batch], num_prefill=num_prefill,
            slots=[r.slot or 0 for r, _ in batch])
        self._tokens.feed(batch, self.iface.info)
        with torch.no_grad():
            logits = self.iface.forward(self.model)  # [B, vocab]: last token of each sequence
        rows, ready = [], []
        for i, (r, n) in enumerate(batch):
            r.num_computed += n
            if r.num_computed == len(r.all_token_ids):  # the whole context is cached: sample the next token
                rows.append(i)
                ready.append(r)
        if not ready:
            return None
        picked = logits if len(rows) == len(batch) else logits[torch.tensor(rows, device=logits.device)]
        if all(r.sampling.temperature == 0 for r in ready):
            return self._tokens.launch(picked, ready, self.scheduler.reserve_token)
        tokens = sampler.sample(picked, [r.sampling for r in ready], [r.generator for r in ready])
        return self._tokens.host_step(tokens, ready)

    def _postprocess(self, flight: Optional[InFlight]) -> list[StepOutput]:
        """Append what the host can read now: the previous step's tokens (read while this step runs on the GPU),
        then this step's if it was sampled on the host; a greedy step stays in flight until the next call."""
        outputs = self._append(self._tokens.take())
        if flight is not None and flight.on_host:
            outputs += self._append(self._tokens.take(flight))
        else:
            self._tokens.inflight = flight
        return outputs

    def _append(self, taken: Optional[tuple[InFlight, list[int]]]) -> list[StepOutput]:
        if taken is None:
            return []
        flight, tokens = taken
        outputs = []
        for r, pos, held, tok in zip(flight.ready, flight.positions, flight.held, tokens):
            if r.finished:
                continue  # it stopped at an earlier token: this one ran past its end
            reason = self.scheduler.append_token(r, tok, pos, held)
            if reason is not None:
                self._finished[r.request_id] = self._completion(r)
            outputs.append(StepOutput(r.request_id, [tok], r.finished, reason, None))
        return outputs

    def _unschedulable(self) -> list[StepOutput]:
        """A safety net (validation prevents it): a waiting request that cannot run even alone fails."""
        if self.scheduler.waiting and not self.scheduler.running:
            return [self._fail(self.scheduler.waiting.popleft(), "the request does not fit the KV cache or "
                               "max_num_tokens even alone")]
        return []

    def _account(self, prefill: list, decode: list, sampled: int, dt: float) -> None:
        s = self.stats
        s.steps += 1
        s.max_batch = max(s.max_batch, len(prefill) + len(decode))
        s.num_preemptions = self.scheduler.num_preemptions
        if prefill:
            s.prefill_steps += 1
            s.prefill_tokens += sum(n for _, n in prefill)
            s.prefill_time_s += dt
        else:
            s.decode_steps += 1
            s.decode_tokens += sampled
            s.decode_time_s += dt

    def _fail(self, r: Request, error: str) -> StepOutput:
        self.scheduler.finish(r, "error", error)
        self._finished[r.request_id] = self._completion(r)
        return StepOutput(r.request_id, [], True, "error", error)

    def _decode(self, ids: list[int]) -> str:
        tok = self.tokenizer
        return "" if tok is None else tok.decode(ids, skip_special_tokens=True)

    def _completion(self, r: Request) -> Completion:
        text = r.text if r.text is not None else self._decode(r.output_token_ids) if r.sampling.detokenize else ""
        return Completion(r.request_id, r.prompt, list(r.prompt_token_ids), list(r.output_token_ids), text,
                          r.finish_reason, r.error)

    # --- convenience -------------------------------------------------------------------------------------------
    def completion(self, request_id: int) -> Optional[Completion]:
        """The finished request's completion (None while it runs)."""
        return self._finished.get(request_id)

    def encode(self, prompt: str, chat_template: bool = False) -> list[int]:
        """Token ids of a text prompt, wrapped in the tokenizer's chat template when asked and available."""
        tok = self.tokenizer
        if tok is None:
            raise ADError("This model has no tokenizer, so text prompts cannot be encoded; pass token ids.")
        if chat_template and getattr(tok, "chat_template", None):
            out = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                          tokenize=True)
            ids = out["input_ids"] if hasattr(out, "keys") else out
            return list(ids)
        return list(tok(prompt)["input_ids"])

    def generate(self, prompts: Sequence[Union[str, Sequence[int]]],
                 sampling: Union[SamplingParams, Sequence[SamplingParams], None] = None,
                 chat_template: Optional[bool] = None) -> list[Completion]:
        """Run `prompts` (texts or token-id lists) to completion; one Completion per prompt, in order.

        chat_template: wrap text prompts in the tokenizer's chat template (default: config prompt.chat_template).
        """
        if sampling is None or isinstance(sampling, SamplingParams):
            sampling = [sampling or SamplingParams()] * len(prompts)
        if len(sampling) != len(prompts):
            raise ADError(f"generate got {len(prompts)} prompts but {len(sampling)} sampling parameter sets.")
        if chat_template is None:
            chat_template = bool(getattr(getattr(self.config, "prompt", None), "chat_template", False))
        ids = []
        for p, sp in zip(prompts, sampling):
            if isinstance(p, str):
                ids.append(self.add_request(self.encode(p, chat_template), sp, prompt=p))
            else:
                ids.append(self.add_request(list(p), sp))
        while any(i not in self._finished for i in ids):
            self.step()
        if not self.has_unfinished():
            self._tokens.take()  # the step launched past the last stop: drop it
        return [self._finished.pop(i) for i in ids]
