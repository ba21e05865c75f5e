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
from typing import Any, Callable, Optional, Sequence, Union

import torch

from autodeploy_cli.config.schema import effective_max_num_tokens
from autodeploy_cli.errors import ADError
from autodeploy_cli.ops.cache import CachedSequenceInterface
from autodeploy_cli.runtime import logprobs
from autodeploy_cli.runtime.sampler import DeviceSampler
from autodeploy_cli.runtime.overlap import InFlight, TokenPipeline
from autodeploy_cli.runtime.pages import PageManager
from autodeploy_cli.runtime.request import (Completion, EngineStats, Request, SamplingParams, StepOutput, StopPolicy,
                                            TokenLogprob, text_prompt_error)
from autodeploy_cli.runtime.scheduler import Scheduler, request_error
from autodeploy_cli.runtime.slots import SlotManager

__all__ = ["Completion", "Engine", "EngineStats", "SamplingParams", "StepOutput", "text_prompt_error"]


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
        self._warned_cap = False
        self._tokens = TokenPipeline(iface.device, iface.info.max_batch_size, self.max_seq_len)
        self._sampler = DeviceSampler(iface.device, iface.info.max_batch_size)

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
        return request_error(ids, sp, self.vocab_size, self.max_seq_len, self.max_num_tokens, self.chunked_prefill,
                             self.pages)

    def check_request(self, prompt_token_ids: Sequence[int], sampling: SamplingParams) -> Optional[str]:
        """Why add_request would fail this request (None: it would run). Reads only fixed limits, so a front end may
        call it from another thread than the one stepping the engine."""
        return self._request_error([int(t) for t in prompt_token_ids], sampling)

    def add_request(self, prompt_token_ids: Sequence[int], sampling: Optional[SamplingParams] = None,
                    prompt: Optional[str] = None) -> int:
        """Queue a request; returns its id. Invalid requests finish with an error at the next step."""
        sp = sampling or SamplingParams()
        rid = self._next_id
        self._next_id += 1
        ids = [int(t) for t in prompt_token_ids]
        seed = sp.seed if sp.seed is not None else self._rng.getrandbits(63)
        req = Request(rid, ids, sp, prompt=prompt, seed=seed)
        error = self._request_error(ids, sp)
        if error:
            self._errors.append(self._fail(req, error))
            return rid
        if len(ids) + sp.max_tokens > self.max_seq_len and not self._warned_cap:
            self._warned_cap = True  # once per engine: the same settings usually cap every request alike
            from autodeploy_cli.log import get_logger

            get_logger().warning(
                f"max_tokens={sp.max_tokens} with a {len(ids)}-token prompt goes past max_seq_len={self.max_seq_len}: "
                f"the request stops at {self.max_seq_len - len(ids)} new tokens (finish reason `length`). Raise "
                "`max_seq_len` for longer outputs.")
        self.scheduler.add(req)
        return rid

    def add_failed_request(self, error: str, sampling: Optional[SamplingParams] = None,
                           prompt: Optional[str] = None) -> int:
        """A request that is wrong before it has token ids (e.g. its text cannot be encoded): it finishes with
        `error` at the next step, like any invalid request."""
        rid = self._next_id
        self._next_id += 1
        self._errors.append(self._fail(Request(rid, [], sampling or SamplingParams(), prompt=prompt), error))
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
        gather, spans = logprobs.gather_plan(batch)
        self.iface.info.set_batch(
            [r.all_token_ids[r.num_computed: r.num_computed + n] for r, n in batch],
            [r.num_computed for r, _ in batch], [r.pages for r, _ in batch], num_prefill=num_prefill, gather=gather,
            slots=[r.slot or 0 for r, _ in batch])
        self._tokens.feed(batch, self.iface.info)
        with torch.no_grad():
            logits = self.iface.forward(self.model)  # [B, vocab]: last token of each sequence (+ scored prompts)
        if spans is not None:
            logprobs.score_prompts(logits, batch, spans)
        rows, ready = [], []
        for i, (r, n) in enumerate(batch):
            r.num_computed += n
            if r.num_computed == len(r.all_token_ids):  # the whole context is cached: sample the next token
                rows.append(i if spans is None else spans[i][0] + spans[i][1] - 1)
                ready.append(r)
        if not ready:
            return None
        same = spans is None and len(rows) == len(batch)
        # the row index goes up without a blocking copy (that would wait for this step's forward to finish)
        picked = logits if same else logits[torch.tensor(rows).to(logits.device, non_blocking=True)]
        if any(self._needs_host(r) for r in ready):
            return self._sample_on_host(picked, ready)
        if self._sampler.wants([r.sampling for r in ready]):  # sampled on the device: the overlap stays
            tokens = self._sample(picked, ready)
        else:
            tokens = picked.argmax(dim=-1)
        return self._tokens.launch(tokens, ready, self.scheduler.reserve_token)

    def _sample(self, logits: torch.Tensor, ready: list[Request]) -> torch.Tensor:
        """One token per row on the device; each row's random number comes from (seed, index of the token drawn)."""
        return self._sampler.sample(logits, [r.sampling for r in ready], [r.seed for r in ready],
                                    [r.num_computed for r in ready])

    # --- logprobs and min_tokens: host-sampled steps, so greedy steps without them keep the overlap ---------------
    @staticmethod
    def _needs_host(r: Request) -> bool:
        return r.sampling.logprobs is not None or len(r.output_token_ids) < r.sampling.min_tokens

    def _sample_on_host(self, picked: torch.Tensor, ready: list[Request]) -> Optional[InFlight]:
        """Sample now (the host reads the tokens at once); EOS / stop tokens masked below min_tokens; logprobs of the
        sampled tokens under the raw logits."""
        masked = logprobs.mask_below_min_tokens(picked, ready, self.eos_token_ids)
        try:
            tokens = self._sample(masked, ready).tolist()
        except (RuntimeError, ValueError) as e:  # a request's sampling cannot run: those requests fail, not the engine
            self._errors += [self._fail(r, f"sampling failed: {type(e).__name__}: {e}") for r in ready]
            return None
        flight = self._tokens.host_step(tokens, ready)
        want = [i for i, r in enumerate(ready) if r.sampling.logprobs is not None]
        if want:
            k = max(ready[i].sampling.logprobs for i in want)
            sel = picked[torch.tensor(want, device=picked.device)]
            for i, (lp, top) in zip(want, logprobs.token_logprobs(sel, [tokens[i] for i in want], k)):
                flight.logprobs[i] = TokenLogprob(tokens[i], lp, top[: ready[i].sampling.logprobs])
        return flight

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
        for row, (r, pos, held, tok) in enumerate(zip(flight.ready, flight.positions, flight.held, tokens)):
            if r.finished:
                continue  # it stopped at an earlier token: this one ran past its end
            lp = flight.logprobs.get(row)
            if lp is not None:
                r.logprobs.append(lp)
            reason = self.scheduler.append_token(r, tok, pos, held)
            if reason is not None:
                self._finished[r.request_id] = self._completion(r)
            first = r.sampling.prompt_logprobs is not None and len(r.output_token_ids) == 1
            outputs.append(StepOutput(r.request_id, [tok], r.finished, reason, None, None if lp is None else [lp],
                                      list(r.prompt_logprobs) if first else None))
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
        sp = r.sampling
        return Completion(r.request_id, r.prompt, list(r.prompt_token_ids), list(r.output_token_ids), text,
                          r.finish_reason, r.error, None if sp.logprobs is None else list(r.logprobs),
                          None if sp.prompt_logprobs is None else list(r.prompt_logprobs))

    # --- convenience -------------------------------------------------------------------------------------------
    def completion(self, request_id: int, pop: bool = False) -> Optional[Completion]:
        """The finished request's completion (None while it runs); pop=True also forgets it (a long-running caller
        such as the server pops each one, so finished requests do not pile up)."""
        return self._finished.pop(request_id, None) if pop else self._finished.get(request_id)

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
            if not isinstance(p, str):
                ids.append(self.add_request(list(p), sp))
            elif text_prompt_error(p):
                ids.append(self.add_failed_request(text_prompt_error(p), sp, prompt=p))
            else:
                ids.append(self.add_request(self.encode(p, chat_template), sp, prompt=p))
        while any(i not in self._finished for i in ids):
            self.step()
        mine = set(ids)
        self._errors = [o for o in self._errors if o.request_id not in mine]  # generate reports them as completions
        if not self.has_unfinished():
            self._tokens.take()  # the step launched past the last stop: drop it
        return [self._finished.pop(i) for i in ids]
