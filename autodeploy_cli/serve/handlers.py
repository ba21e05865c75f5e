"""`POST /v1/completions` and `POST /v1/chat/completions`: validate, submit one group of engine requests, then
answer at once (JSON) or stream (SSE `data: {json}` chunks, one per token event, ending with `data: [DONE]`).

A client that disconnects aborts its unfinished requests: streaming responses close their generator (see
`AbortingStream`), non-streaming ones poll for the disconnect while they wait.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, AsyncIterator, Optional

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from autodeploy_cli.serve import requests as rq
from autodeploy_cli.serve.detok import IncrementalText, token_text
from autodeploy_cli.serve.engine_loop import Group, QueueFull, Sub
from autodeploy_cli.serve.protocol import (ChatCompletionRequest, CompletionRequest, RequestError, chat_logprobs,
                                           legacy_logprobs, parse)

DONE = b"data: [DONE]\n\n"


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class Chunks:
    """SSE chunks of one response: the head (id, object, created, model) serialised once, so a token costs one
    small json.dumps of its choice (the stream's hot path)."""

    def __init__(self, head: dict[str, Any]):
        self.head = head
        self._prefix = b"data: " + json.dumps(head, separators=(",", ":")).encode()[:-1] + b',"choices":['

    def choice(self, choice: dict[str, Any]) -> bytes:
        return self._prefix + json.dumps(choice, separators=(",", ":")).encode() + b"]}\n\n"


class ClientGone(Exception):
    pass


class AbortingStream(StreamingResponse):
    """Closes its generator however the response ends (a disconnect cancels the send, not the generator), so the
    generator's `finally` aborts the engine requests at once."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


class Run:
    """The engine requests of one HTTP request (choice index = prompt index * n + i)."""

    def __init__(self, state: Any, items: list[tuple[rq.Prompt, Any]]):
        self.state, self.items = state, items
        self.group = Group([Sub(i, p.token_ids, sp) for i, (p, sp) in enumerate(items)], asyncio.Queue())

    def submit(self) -> None:
        try:
            self.state.loop.submit(self.group)
        except QueueFull:
            raise RequestError(f"The server is busy: {self.state.loop.num_waiting} requests are waiting (the limit "
                               "is --max-queue). Retry later.", None, 429, "rate_limit_exceeded",
                               {"Retry-After": "1"}) from None
        self.state.metrics.prompt_tokens.inc(self.group.num_prompt_tokens)

    async def events(self, request: Optional[Request] = None) -> AsyncIterator[tuple]:
        """Events until every request is done; with `request`, polls for a disconnect while it waits."""
        left = len(self.group.subs)
        q = self.group.queue
        while left:
            if request is None:
                ev = await q.get()
            else:
                try:
                    ev = await asyncio.wait_for(q.get(), 0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        raise ClientGone() from None
                    continue
            if ev[0] in ("done", "fail"):
                left -= 1
            yield ev

    def abort(self) -> None:
        if not all(s.done for s in self.group.subs):
            self.state.loop.abort(self.group)

    def prompt_tokens(self) -> int:
        seen: dict[int, int] = {}
        for p, _ in self.items:
            seen[id(p)] = len(p.token_ids)
        return sum(seen.values())


def _final_text(state: Any, comp: Any, sp: Any) -> str:
    if sp.stop:  # the engine decoded it and cut it at the stop string
        return comp.text
    return state.tokenizer.decode(comp.token_ids, skip_special_tokens=True) if state.tokenizer else ""


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _ids(req: Any, prompt_ids: list[int], ids: list[int]) -> dict[str, Any]:
    return {"prompt_token_ids": list(prompt_ids), "token_ids": list(ids)} if req.return_token_ids else {}


def _error_of(comp: Any) -> Optional[RequestError]:
    if comp is not None and comp.finish_reason == "error":
        return RequestError(f"Invalid request: {comp.error}.", None)
    return None


class Handlers:
    def __init__(self, state: Any):
        self.state = state

    def _text(self, tid: int) -> str:
        return token_text(self.state.tokenizer, tid)

    def _prompt_text(self, p: rq.Prompt) -> str:
        if p.text is not None:
            return p.text
        tok = self.state.tokenizer
        return tok.decode(p.token_ids) if tok is not None else ""

    async def _collect(self, run: Run, request: Request) -> dict[int, Any]:
        out: dict[int, Any] = {}
        try:
            async for kind, idx, payload in run.events(request):
                if kind == "fail":
                    raise RequestError(payload, None, 500, "internal_error")
                if kind == "done":
                    out[idx] = payload
        except ClientGone:
            run.abort()
            raise RequestError("The client closed the connection.", None, 499) from None
        for comp in out.values():
            err = _error_of(comp)
            if err:
                raise err
        return out

    # --- /v1/completions ------------------------------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        st = self.state
        req = parse(CompletionRequest, await request.body())
        rq.check_model(req.model, st.served_names)
        prompts = rq.completion_prompts(req, st.tokenizer)
        k = req.logprobs
        items = rq.plan(req, prompts, st.limits, req.max_tokens, k, k if (req.echo and k is not None) else None)
        run = Run(st, items)
        run.submit()
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": created, "model": st.served_names[0]}
        if req.stream:
            return AbortingStream(self._stream_completions(run, req, head), media_type="text/event-stream")
        results = await self._collect(run, request)
        choices = []
        for idx in sorted(results):
            comp, (p, sp) = results[idx], items[idx]
            text = _final_text(st, comp, sp)
            prefix = self._prompt_text(p) if req.echo else ""
            lp = None
            if k is not None:
                entries = list(zip(comp.prompt_logprobs or [], p.token_ids)) if req.echo else []
                entries += list(zip(comp.logprobs or [], comp.token_ids))
                lp = legacy_logprobs(entries, self._text)
            choices.append({"index": idx, "text": prefix + text, "logprobs": lp, "finish_reason": comp.finish_reason,
                            **_ids(req, p.token_ids, comp.token_ids)})
        usage = _usage(run.prompt_tokens(), sum(len(c.token_ids) for c in results.values()))
        return JSONResponse({**head, "choices": choices, "usage": usage})

    async def _stream_completions(self, run: Run, req: CompletionRequest, head: dict) -> AsyncIterator[bytes]:
        out = Chunks(head)
        detoks = {i: IncrementalText(self.state.tokenizer, sp.stop) for i, (_, sp) in enumerate(run.items)}
        offsets = dict.fromkeys(detoks, 0)
        started: set[int] = set()
        generated = 0
        try:
            async for kind, idx, payload in run.events():
                p, sp = run.items[idx]
                if kind == "fail":
                    yield sse({"error": RequestError(payload, None, 500, "internal_error").body()["error"]})
                    continue
                if kind == "done":
                    err = _error_of(payload)
                    if err:
                        yield sse(err.body())
                        continue
                    generated += len(payload.token_ids)
                    rest = detoks[idx].finish(_final_text(self.state, payload, sp))
                    yield out.choice({"index": idx, "text": rest, "logprobs": None,
                                      "finish_reason": payload.finish_reason})
                    continue
                # a stop string ends on this token: the done event sends the text cut before it
                text = "" if payload.finished and sp.stop else detoks[idx].push(payload.new_token_ids)
                entries: list = []
                if req.echo and idx not in started:
                    text = self._prompt_text(p) + text
                    entries += list(zip(payload.prompt_logprobs or [], p.token_ids))
                started.add(idx)
                lp = None
                if req.logprobs is not None:
                    entries += list(zip(payload.logprobs or [], payload.new_token_ids))
                    lp = legacy_logprobs(entries, self._text, offsets[idx])
                    offsets[idx] += sum(len(t) for t in lp["tokens"])
                ids = {"token_ids": payload.new_token_ids} if req.return_token_ids else {}
                yield out.choice({"index": idx, "text": text, "logprobs": lp, "finish_reason": None, **ids})
            if req.stream_options is not None and req.stream_options.include_usage:
                yield sse({**head, "choices": [], "usage": _usage(run.prompt_tokens(), generated)})
            yield DONE
        finally:
            run.abort()

    # --- /v1/chat/completions -------------------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        st = self.state
        req = parse(ChatCompletionRequest, await request.body())
        rq.check_model(req.model, st.served_names)
        if req.top_logprobs is not None and not req.logprobs:
            raise RequestError("`top_logprobs` needs `logprobs: true`.", "top_logprobs")
        prompt = rq.chat_prompt(req, st.tokenizer)
        k = (req.top_logprobs or 0) if req.logprobs else None
        items = rq.plan(req, [prompt], st.limits, req.max_completion_tokens or req.max_tokens, k, None)
        run = Run(st, items)
        run.submit()
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "created": created, "model": st.served_names[0]}
        if req.stream:
            return AbortingStream(self._stream_chat(run, req, {**head, "object": "chat.completion.chunk"}),
                                  media_type="text/event-stream")
        results = await self._collect(run, request)
        choices = []
        for idx in sorted(results):
            comp, (_, sp) = results[idx], items[idx]
            lp = chat_logprobs(comp.logprobs or [], self._text) if k is not None else None
            choices.append({"index": idx, "message": {"role": "assistant", "content": _final_text(st, comp, sp)},
                            "logprobs": lp, "finish_reason": comp.finish_reason,
                            **_ids(req, items[idx][0].token_ids, comp.token_ids)})
        usage = _usage(run.prompt_tokens(), sum(len(c.token_ids) for c in results.values()))
        return JSONResponse({**head, "object": "chat.completion", "choices": choices, "usage": usage})

    async def _stream_chat(self, run: Run, req: ChatCompletionRequest, head: dict) -> AsyncIterator[bytes]:
        detoks = {i: IncrementalText(self.state.tokenizer, sp.stop) for i, (_, sp) in enumerate(run.items)}
        generated = 0

        out = Chunks(head)

        def chunk(idx: int, delta: dict, lp: Any = None, finish: Optional[str] = None, extra: Any = None) -> bytes:
            return out.choice({"index": idx, "delta": delta, "logprobs": lp, "finish_reason": finish, **(extra or {})})

        try:
            for idx in detoks:
                yield chunk(idx, {"role": "assistant", "content": ""})
            async for kind, idx, payload in run.events():
                if kind == "fail":
                    yield sse({"error": RequestError(payload, None, 500, "internal_error").body()["error"]})
                    continue
                if kind == "done":
                    err = _error_of(payload)
                    if err:
                        yield sse(err.body())
                        continue
                    generated += len(payload.token_ids)
                    rest = detoks[idx].finish(_final_text(self.state, payload, run.items[idx][1]))
                    yield chunk(idx, {"content": rest} if rest else {}, None, payload.finish_reason)
                    continue
                stops = run.items[idx][1].stop
                text = "" if payload.finished and stops else detoks[idx].push(payload.new_token_ids)
                lp = chat_logprobs(payload.logprobs or [], self._text) if req.logprobs else None
                yield chunk(idx, {"content": text}, lp, None,
                            {"token_ids": payload.new_token_ids} if req.return_token_ids else None)
            if req.stream_options is not None and req.stream_options.include_usage:
                yield sse({**head, "choices": [], "usage": _usage(run.prompt_tokens(), generated)})
            yield DONE
        finally:
            run.abort()
