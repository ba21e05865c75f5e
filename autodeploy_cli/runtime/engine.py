"""The built-in runtime (`runtime: demollm`): requests in, tokens out, one forward per step over a flattened batch.

    engine = Engine.from_config(cfg)                      # runs the pipeline
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
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import torch

from autodeploy_cli.errors import ADError
from autodeploy_cli.runtime import sampler
from autodeploy_cli.runtime.page_manager import PageManager
from autodeploy_cli.runtime.overlap import TokenPipeline
from autodeploy_cli.runtime.scheduler import Request, Scheduler
from autodeploy_cli.ops.sequence_info import CachedSequenceInterface


@dataclass
class SamplingParams:
    max_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy
    top_k: Optional[int] = None  # None or 0 = off
    top_p: float = 1.0
    seed: Optional[int] = None  # per-request generator seed (None: drawn from the engine's seeded RNG)
    stop: list[str] = field(default_factory=list)  # stop strings (cut from the text)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    detokenize: bool = True  # False: token ids only, Completion.text stays "" and no tokenizer is loaded

    @classmethod
    def from_config(cls, sc: Any) -> "SamplingParams":
        """From config.schema.SamplingConfig (or any object with the same fields)."""
        return cls(max_tokens=sc.max_tokens, temperature=sc.temperature, top_k=sc.top_k, top_p=sc.top_p,
                   seed=sc.seed, stop=list(sc.stop), stop_token_ids=list(sc.stop_token_ids),
                   ignore_eos=sc.ignore_eos)


@dataclass
class StepOutput:
    request_id: int
    new_token_ids: list[int]
    finished: bool
    finish_reason: Optional[str]  # stop | length | error (when finished)
    error: Optional[str]


@dataclass
class Completion:
    request_id: int
    prompt: Optional[str]
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: Optional[str]
    error: Optional[str]


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


def _generation_eos(source: str) -> Any:
    """eos_token_id of the model's generation_config.json (what HF generate stops on), if it has one.

    Local folder or HF cache only: building an engine must not wait on the network (offline, huggingface_hub retries
    for minutes). Loading a hub model's weights caches its generation config; random-weight builds of a hub id use
    config.json's eos."""
    try:
        from transformers import GenerationConfig

        return GenerationConfig.from_pretrained(source, local_files_only=True).eos_token_id
    except Exception:  # noqa: BLE001 - no generation config (or offline): config.json's eos is used alone
        return None


class Engine:
    def __init__(self, model: Any, iface: CachedSequenceInterface, config: Any, tokenizer: Any = None,
                 build_result: Any = None, eos_token_ids: Sequence[int] = (), vocab_size: Optional[int] = None,
                 tokenizer_loader: Any = None):
        from autodeploy_cli.ops.sequence_info import effective_max_num_tokens

        if not iface.caches:
            raise ADError("The built model has no KV cache, so the runtime cannot run it. Keep "
                          "`transforms.insert_cached_attention` and `transforms.initialize_cache` enabled.")
        self.model = model
        self.iface = iface
        self.config = config
        self.build_result = build_result
        self._tokenizer = tokenizer
        self._tokenizer_loader = tokenizer_loader
        self.eos_token_ids = set(int(t) for t in eos_token_ids)
        self.vocab_size = vocab_size
        self.max_seq_len = iface.info.max_seq_len
        self.max_num_tokens = min(effective_max_num_tokens(config), iface.info.max_num_tokens)
        self.chunked_prefill = bool(config.enable_chunked_prefill)
        self.pages = PageManager(iface.num_pages, iface.page_size)
        self.scheduler = Scheduler(self.pages, iface.info.max_batch_size, self.max_num_tokens, self.chunked_prefill)
        self.stats = EngineStats()
        self._rng = random.Random(config.seed)
        self._next_id = 0
        self._errors: list[StepOutput] = []
        self._finished: dict[int, Completion] = {}
        self._tokens = TokenPipeline(iface.device, iface.info.max_batch_size, self.max_seq_len)

    # --- construction ------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Any) -> "Engine":
        """Run the pipeline for `cfg` and wrap the built model."""
        from autodeploy_cli.pipeline.build import build

        result = build(cfg)
        iface = result.ctx.sequence_info
        if iface is None:
            raise ADError("The pipeline inserted no KV cache (no attention was found, or "
                          "`transforms.insert_cached_attention` is disabled); the runtime needs one.")
        factory = result.ctx.factory
        hf_config = factory.hf_config()
        text_cfg = getattr(hf_config, "get_text_config", lambda: hf_config)()
        eos_ids: list[int] = []
        for eos in (getattr(text_cfg, "eos_token_id", None), _generation_eos(factory.source)):
            eos_ids += eos if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos])
        return cls(result.model, iface, cfg, build_result=result, eos_token_ids=eos_ids,
                   vocab_size=getattr(text_cfg, "vocab_size", None), tokenizer_loader=factory.tokenizer)

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

    def has_unfinished(self) -> bool:
        return bool(self._errors) or self.scheduler.has_work() or self._tokens.busy()

    # --- one step ---------------------------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        """Schedule, run one forward over the flattened batch, sample, and report what changed.

        Greedy steps overlap with the host: the step's tokens stay on the GPU (its argmax feeds the next step's
        input_ids there), and the host reads them after launching the next step, so the outputs of step N are
        returned by the call that launches step N+1. A request that stops on a token is computed one token past
        its end at most; that token is dropped. Sampled (temperature > 0) steps read their logits at once.
        """
        t0 = time.perf_counter()
        outputs, self._errors = self._errors, []
        batch = self.scheduler.schedule()
        if not batch:
            outputs += self._resolve()
            if not outputs and self.scheduler.waiting and not self.scheduler.running:
                outputs.append(self._fail(self.scheduler.waiting.popleft(), "the request does not fit the KV cache "
                                          "or max_num_tokens even alone"))  # a safety net: validation prevents it
            return outputs
        # prefill (context) sequences first, then decodes (one new token after a cached context)
        prefill = [(r, n) for r, n in batch if not (n == 1 and r.num_computed > 0)]
        decode = [(r, n) for r, n in batch if n == 1 and r.num_computed > 0]
        batch = prefill + decode
        self.iface.info.set_batch(
            [r.all_token_ids[r.num_computed: r.num_computed + n] for r, n in batch],
            [r.num_computed for r, _ in batch], [r.pages for r, _ in batch], num_prefill=len(prefill))
        self._tokens.feed(batch, self.iface.info)
        with torch.no_grad():
            logits = self.iface.forward(self.model)  # [B, vocab]: last token of each sequence
        rows, ready = [], []
        for i, (r, n) in enumerate(batch):
            r.num_computed += n
            if r.num_computed == len(r.all_token_ids):  # the whole context is cached: sample the next token
                rows.append(i)
                ready.append(r)
        launched = None
        if ready:
            picked = logits if len(rows) == len(batch) else logits[torch.tensor(rows, device=logits.device)]
            if all(r.sampling.temperature == 0 for r in ready):
                launched = self._tokens.launch(picked, ready)
            else:  # sampling runs on the host: read the previous step, then this one
                outputs += self._resolve()
                tokens = sampler.sample(picked, [r.sampling for r in ready], [r.generator for r in ready])
                for r, tok in zip(ready, tokens):
                    if not r.finished:
                        outputs.append(self._append_token(r, tok, len(r.all_token_ids), held=False))
        outputs += self._resolve()  # the previous step's tokens, read while this step runs on the GPU
        self._tokens.inflight = launched
        self._account(prefill, decode, len(ready), time.perf_counter() - t0)
        return outputs

    def _resolve(self) -> list[StepOutput]:
        """Read the in-flight step's tokens (waits for that step only) and append them."""
        taken = self._tokens.take()
        if taken is None:
            return []
        flight, tokens = taken
        return [self._append_token(r, tok, pos, held)
                for r, pos, held, tok in zip(flight.ready, flight.positions, flight.held, tokens)
                if not r.finished]  # a finished one stopped at an earlier token: this one ran past its end

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

    def _append_token(self, r: Request, tok: int, pos: int, held: bool) -> StepOutput:
        """Token `tok` at all_token_ids[pos] (held: that slot has its placeholder, else it is appended)."""
        r.output_token_ids.append(tok)
        if held:
            r.all_token_ids[pos] = tok
        else:
            r.all_token_ids.append(tok)
        sp = r.sampling
        reason = None
        if tok in sp.stop_token_ids or (not sp.ignore_eos and tok in self.eos_token_ids):
            reason = "stop"
        elif sp.stop and self._hit_stop_string(r):
            reason = "stop"
        elif len(r.output_token_ids) >= sp.max_tokens or pos + 1 >= self.max_seq_len:
            reason = "length"  # max_tokens reached, or prompt + output fill max_seq_len
        if reason is not None:
            r.finished, r.finish_reason = True, reason
            self.scheduler.finish(r)
            self._finished[r.request_id] = self._completion(r)
        return StepOutput(r.request_id, [tok], r.finished, reason, None)

    def _fail(self, r: Request, error: str) -> StepOutput:
        r.finished, r.finish_reason, r.error, r.text = True, "error", error, ""
        self.scheduler.finish(r)
        self._finished[r.request_id] = self._completion(r)
        return StepOutput(r.request_id, [], True, "error", error)

    def _decode(self, ids: list[int]) -> str:
        tok = self.tokenizer
        return "" if tok is None else tok.decode(ids, skip_special_tokens=True)

    def _hit_stop_string(self, r: Request) -> bool:
        text = self._decode(r.output_token_ids)
        cut = min((p for p in (text.find(s) for s in r.sampling.stop if s) if p >= 0), default=-1)
        if cut < 0:
            return False
        r.text = text[:cut]
        return True

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
            self._resolve()  # the step launched past the last stop: drop it
        return [self._finished.pop(i) for i in ids]
