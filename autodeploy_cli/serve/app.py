"""The FastAPI app: the OpenAI routes plus models, health, metrics, tokenize / detokenize and tokenizer_info.

`ServerState` is what the routes share: the engine loop, the metrics, the served names, the front end's own
tokenizer (a copy: the engine thread decodes with its own) and the limits requests are checked against. Until the
engine is built and warmed up, /health and every model route answer 503.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from autodeploy_cli.serve import requests as rq
from autodeploy_cli.serve.engine_loop import EngineLoop
from autodeploy_cli.serve.handlers import Handlers
from autodeploy_cli.serve.metrics import CONTENT_TYPE, ServerMetrics
from autodeploy_cli.serve.protocol import DetokenizeRequest, RequestError, TokenizeRequest, parse

log = logging.getLogger("autodeploy_cli.serve")
ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/tokenize",
          "/detokenize", "/tokenizer_info", "/version")


@dataclass
class ServerState:
    loop: EngineLoop
    served_names: list[str]
    max_seq_len: int
    tokenizer: Any = None
    limits: Optional[rq.Limits] = None
    created: int = field(default_factory=lambda: int(time.time()))
    metrics: Any = None

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self.loop)
        self.loop.on_events = self.metrics.on_events

    @property
    def ready(self) -> bool:
        return self.loop.ready.is_set() and self.limits is not None


class CountRequests:
    """ASGI middleware: counts every response by route and status code (streamed ones too)."""

    def __init__(self, app: Any, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope.get("path", "") if scope.get("path") in ROUTES else "other"

        async def counted(message: dict) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(route, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)


def _not_ready(state: ServerState) -> RequestError:
    if state.loop.failed is not None:
        return RequestError(f"The model failed to build: {state.loop.failed}", None, 503, "service_unavailable")
    return RequestError("The model is still being built and warmed up; retry once GET /health answers 200.", None,
                        503, "service_unavailable", {"Retry-After": "5"})


def create_app(state: ServerState, lifespan: Any = None) -> FastAPI:
    """The ASGI app (FastAPI inside a counting middleware); `lifespan`: FastAPI's start-up/shut-down context."""
    app = FastAPI(title="ad serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    handlers = Handlers(state)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, e: RequestError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, e: Exception) -> JSONResponse:  # a bug in ad, never bad input
        log.exception("internal error while serving a request")
        return JSONResponse(RequestError(f"internal error: {type(e).__name__}: {e}", None, 500,
                                         "internal_error").body(), status_code=500)

    def model_route(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            if not state.ready:
                raise _not_ready(state)
            return await fn(request)
        route.__name__ = fn.__name__
        return route

    app.post("/v1/completions")(model_route(handlers.completions))
    app.post("/v1/chat/completions")(model_route(handlers.chat))

    _info_routes(app, state)
    _tokenizer_routes(app, state)
    return CountRequests(app, state.metrics)  # type: ignore[return-value]


def _info_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/health")
    async def health() -> Response:
        if state.ready:
            return JSONResponse({"status": "ok"})
        status = "failed" if state.loop.failed is not None else "loading"
        return JSONResponse({"status": status}, status_code=503)

    @app.get("/v1/models")
    async def models() -> Response:
        data = [{"id": n, "object": "model", "created": state.created, "owned_by": "ad", "root": n,
                 "max_model_len": state.max_seq_len} for n in state.served_names]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/version")
    async def version() -> Response:
        from importlib import metadata

        try:
            v = metadata.version("autodeploy-cli")
        except metadata.PackageNotFoundError:
            v = "unknown"
        return JSONResponse({"version": v})


def _tokenizer_routes(app: FastAPI, state: ServerState) -> None:
    @app.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        if not state.ready:
            raise _not_ready(state)
        req = parse(TokenizeRequest, await request.body())
        rq.check_model(req.model, state.served_names)
        tok = state.tokenizer
        if req.messages is not None:
            ids = rq.chat_prompt(req, tok).token_ids  # type: ignore[arg-type]
        elif req.prompt is not None:
            if tok is None:
                raise RequestError("This model has no tokenizer.", "prompt")
            ids = list(tok(req.prompt, add_special_tokens=req.add_special_tokens)["input_ids"])
        else:
            raise RequestError("Give `prompt` (a string) or `messages`.", "prompt")
        return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": state.max_seq_len})

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Response:
        if not state.ready:
            raise _not_ready(state)
        req = parse(DetokenizeRequest, await request.body())
        rq.check_model(req.model, state.served_names)
        v = state.limits.vocab_size if state.limits else None
        if v is not None and any(t < 0 or t >= v for t in req.tokens):
            raise RequestError(f"`tokens` has ids outside [0, {v}) (the model's vocabulary).", "tokens")
        if state.tokenizer is None:
            raise RequestError("This model has no tokenizer.", "tokens")
        return JSONResponse({"prompt": state.tokenizer.decode(req.tokens)})

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> Response:
        if not state.ready:
            raise _not_ready(state)
        tok = state.tokenizer
        if tok is None:
            raise RequestError("This model has no tokenizer.", None, 404, "not_found")
        info = {k: getattr(tok, k, None) for k in ("eos_token", "bos_token", "pad_token", "chat_template")}
        info.update(model_max_length=state.max_seq_len, tokenizer_class=type(tok).__name__)
        return JSONResponse({k: (v if isinstance(v, (str, int, type(None))) else str(v)) for k, v in info.items()})
