"""The engine on its own thread: it builds the model, warms it up, then steps continuously while there is work.

The HTTP side (one asyncio event loop) never touches the engine: it hands a `Group` (the engine requests of one HTTP
request: n choices x prompts) to `submit`, and `abort`s it when the client goes away. The engine thread adds and
aborts requests between steps and, after every step, sends that step's outputs to each group's asyncio queue in
one `call_soon_threadsafe` (so tokens stream as each step produces them). Events on a group's queue:
`("token", index, StepOutput)`, `("done", index, Completion)`, `("fail", index, message)`, and `("aborted", index,
None)` once the engine has really cancelled a request of an aborted group.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

log = logging.getLogger("autodeploy_cli.serve")


class QueueFull(Exception):
    """More requests wait than --max-queue allows."""


@dataclass
class Sub:
    """One engine request of a group."""

    index: int  # the choice index in the response
    token_ids: list[int]
    sampling: Any
    request_id: Optional[int] = None
    done: bool = False
    last_token_at: Optional[float] = None  # when its last token reached the event loop (metrics)


@dataclass(eq=False)
class Group:
    subs: list[Sub]
    queue: asyncio.Queue
    arrival: float = field(default_factory=time.perf_counter)
    aborted: bool = False

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.subs)


class EngineLoop:
    """Owns the engine thread. `build()` runs on that thread (the model is built and stepped on one thread: CUDA's
    current device and streams are per thread)."""

    def __init__(self, build: Callable[[], Any], max_queue: int, warmup: Callable[[Any], Any]):
        self._build, self._warmup = build, warmup
        self.max_queue = max_queue
        self.engine: Any = None
        self.warm_result: Any = None  # what warmup(engine) returned (the server: the tokenizer)
        self.ready = threading.Event()
        self.failed: Optional[BaseException] = None
        self._inbox: deque[tuple[str, Group]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._live: dict[int, tuple[Group, Sub]] = {}
        self._queued = 0  # engine requests submitted but not yet handed to the engine (both threads: _lock)
        self._lock = threading.Lock()
        self.steps = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self.on_events: Callable[[list[tuple[Group, tuple]]], None] = lambda events: None  # metrics hook

    # --- lifecycle -----------------------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop, on_fail: Callable[[BaseException], None]) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._main, args=(on_fail,), name="ad-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _main(self, on_fail: Callable[[BaseException], None]) -> None:
        try:
            self.engine = self._build()
            self.warm_result = self._warmup(self.engine)
        except BaseException as e:  # noqa: BLE001 - the server reports it and exits
            self.failed = e
            on_fail(e)
            return
        self.ready.set()
        log.info("engine ready: %s", type(self.engine).__name__)
        while not self._stop.is_set():
            self._drain_inbox()
            if self.engine.has_unfinished():
                self._step()
            else:
                self._wake.wait(0.5)
                self._wake.clear()

    # --- the HTTP side -------------------------------------------------------------------------------------------
    @property
    def num_waiting(self) -> int:
        waiting = len(self.engine.scheduler.waiting) if self.engine is not None else 0
        return self._queued + waiting

    @property
    def num_running(self) -> int:
        return len(self.engine.scheduler.running) if self.engine is not None else 0

    def submit(self, group: Group) -> None:
        """Queue a group (called on the event loop); QueueFull beyond max_queue waiting engine requests."""
        if self.num_waiting + len(group.subs) > self.max_queue:
            raise QueueFull()
        with self._lock:
            self._queued += len(group.subs)
        self._inbox.append(("add", group))
        self._wake.set()

    def abort(self, group: Group) -> None:
        """Cancel the group's unfinished requests (the client went away); their pages return at the next step."""
        if not group.aborted and not all(s.done for s in group.subs):
            group.aborted = True
            self._inbox.append(("abort", group))
            self._wake.set()

    # --- the engine thread ---------------------------------------------------------------------------------------
    def _drain_inbox(self) -> None:
        while self._inbox:
            kind, group = self._inbox.popleft()
            if kind == "add":
                with self._lock:
                    self._queued -= len(group.subs)
                if group.aborted:
                    continue
                for sub in group.subs:
                    sub.request_id = self.engine.add_request(sub.token_ids, sub.sampling)
                    self._live[sub.request_id] = (group, sub)
            else:
                events = []
                for sub in group.subs:
                    if sub.request_id is not None and not sub.done:
                        self.engine.abort(sub.request_id)
                        self.engine.completion(sub.request_id, pop=True)
                        self._live.pop(sub.request_id, None)
                        sub.done = True
                        events.append((group, ("aborted", sub.index, None)))
                self._send(events)  # for the metrics: nobody reads an aborted group's queue

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as e:  # noqa: BLE001 - an internal error fails the requests in flight, not the server
            log.error("engine step failed: %s", traceback.format_exc())
            self._fail_all(f"internal error in the engine: {type(e).__name__}: {e}")
            return
        self.steps += 1
        events: list[tuple[Group, tuple]] = []
        for out in outputs:
            entry = self._live.get(out.request_id)
            if entry is None:
                continue
            group, sub = entry
            if out.new_token_ids:
                events.append((group, ("token", sub.index, out)))
            if out.finished:
                del self._live[out.request_id]
                sub.done = True
                events.append((group, ("done", sub.index, self.engine.completion(out.request_id, pop=True))))
        if events:
            self._send(events)

    def _fail_all(self, message: str) -> None:
        events = []
        for rid, (group, sub) in list(self._live.items()):
            try:
                self.engine.abort(rid)
                self.engine.completion(rid, pop=True)
            except Exception:  # noqa: BLE001 - best effort: the engine is already in trouble
                pass
            sub.done = True
            events.append((group, ("fail", sub.index, message)))
        self._live.clear()
        self._send(events)

    def _send(self, events: list[tuple[Group, tuple]]) -> None:
        if events and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._deliver, events)

    def _deliver(self, events: list[tuple[Group, tuple]]) -> None:
        self.on_events(events)
        for group, event in events:
            group.queue.put_nowait(event)
