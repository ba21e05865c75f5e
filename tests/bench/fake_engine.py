"""A stand-in for the runtime Engine (same API: add_request, step, has_unfinished, build_result,
kv_capacity_tokens) that emits one token per live request per step, so bench logic is tested without a build."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Optional

BUILD_RECORDS = [  # (name, stage, seconds)
    ("build_model", "factory", 0.5),
    ("export_to_gm", "export", 1.0),
    ("cleanup_noop_slice", "post_export", 0.25),
    ("load_weights", "weight_load", 0.125),
    ("insert_cached_attention", "cache_init", 0.25),
    ("compile_model", "compile", 0.0625),
]


@dataclass
class FakeSampling:
    max_tokens: int
    ignore_eos: bool = True


@dataclass
class FakeOutput:
    request_id: int
    new_token_ids: list[int]
    finished: bool
    finish_reason: Optional[str] = None
    error: Optional[str] = None


@dataclass
class FakeEngine:
    step_s: float = 0.001  # sleep per step, so every duration is > 0
    interrupt_at_step: Optional[int] = None  # raise KeyboardInterrupt when this step starts (Ctrl-C)
    short_by: int = 0  # finish every request this many tokens early (an engine bug the bench must report)
    fail_with: Optional[str] = None  # every request ends at its first step with this error
    kv_capacity_tokens: int = 4096
    tokenizer: Any = None
    build_result: Any = field(default_factory=lambda: SimpleNamespace(records=[
        SimpleNamespace(name=n, stage=s, time_s=t, num_matches=1, enabled=True) for n, s, t in BUILD_RECORDS]))
    steps: int = 0
    max_live: int = 0
    prompts: list = field(default_factory=list)
    _live: dict = field(default_factory=dict)
    _next: int = 0

    def add_request(self, prompt_token_ids: list[int], sampling: Any) -> int:
        rid, self._next = self._next, self._next + 1
        self.prompts.append(list(prompt_token_ids))
        self._live[rid] = [sampling.max_tokens - self.short_by, 0]
        self.max_live = max(self.max_live, len(self._live))
        return rid

    def step(self) -> list[FakeOutput]:
        self.steps += 1
        if self.interrupt_at_step is not None and self.steps >= self.interrupt_at_step:
            raise KeyboardInterrupt
        time.sleep(self.step_s)
        if self.fail_with is not None:
            outs = [FakeOutput(rid, [], True, None, self.fail_with) for rid in self._live]
            self._live.clear()
            return outs
        outs = []
        for rid, state in list(self._live.items()):
            state[1] += 1
            done = state[1] >= state[0]
            outs.append(FakeOutput(rid, [7], done, "length" if done else None))
            if done:
                del self._live[rid]
        return outs

    def has_unfinished(self) -> bool:
        return bool(self._live)
