"""`ad serve`: uvicorn in the main thread (it owns SIGTERM / Ctrl-C), the engine on its own thread.

Start-up: the server listens at once (GET /health answers 503 while the model builds), the engine thread builds
and warms up the model, then /health answers 200. Shut-down (SIGTERM or Ctrl-C): uvicorn stops accepting
connections, lets the requests in flight finish for up to `grace_period_s`, then cancels what is left (aborting
its engine requests) and the engine thread stops. A build that fails ends the server with the build's error.

With world_size > 1, only rank 0 serves: the other ranks build their shard and follow rank 0's steps (the
distributed runtime does that inside build_engine); no HTTP code runs there.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Optional

from autodeploy_cli.config.schema import ADConfig
from autodeploy_cli.errors import ADError

log = logging.getLogger("autodeploy_cli.serve")


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    max_queue: int = 4096  # engine requests waiting to be scheduled before new ones get 429
    grace_period_s: float = 30.0
    served_model_names: list[str] = field(default_factory=list)  # default: the config's model
    access_log: bool = False


def warm_up(engine: Any) -> Any:
    """One short request through prefill and decode (first-call costs out of the first user's latency); returns
    the tokenizer, loaded once here (None when the model has none: token-id prompts still work)."""
    from autodeploy_cli.runtime.request import SamplingParams

    vocab = engine.vocab_size or 8
    ids = [(7 * i + 3) % vocab for i in range(min(8, engine.max_seq_len - 2))] or [0]
    engine.generate([ids], SamplingParams(max_tokens=2, ignore_eos=True, detokenize=False))
    try:
        return engine.tokenizer  # load it now, on the engine thread, not on the first text request
    except Exception as e:  # noqa: BLE001 - a model without a tokenizer still serves token ids
        log.warning("no tokenizer (%s): only token-id prompts will work", e)
        return None


def run_server(cfg: ADConfig, opts: ServeOptions) -> None:
    """Serve until SIGTERM / Ctrl-C; raises ADError when the model cannot be built. With world_size > 1 this runs on
    rank 0 only (commands/ranks.py: the other ranks follow its steps)."""
    from autodeploy_cli.llm import build_engine

    try:
        import uvicorn

        from autodeploy_cli.serve.app import ServerState, create_app
        from autodeploy_cli.serve.engine_loop import EngineLoop
    except ImportError as e:
        raise ADError(f"`ad serve` needs the serve extra ({e.name} is missing): pip install -e \".[serve]\".") from None
    from autodeploy_cli.serve import requests as rq

    names = list(opts.served_model_names) or [cfg.model]
    loop = EngineLoop(lambda: build_engine(cfg), opts.max_queue, warm_up)
    state = ServerState(loop, names, cfg.max_seq_len)
    server_box: list[Any] = []

    def on_ready() -> None:
        engine = loop.engine
        state.tokenizer = copy.deepcopy(loop.warm_result)  # the front end's own: two threads never share one tokenizer
        state.limits = rq.Limits(engine.max_seq_len, engine.vocab_size, engine.check_request,
                                 loop.warm_result is not None)
        state.max_seq_len = engine.max_seq_len
        print(f"ad serve: {names[0]} ready on http://{opts.host}:{opts.port}", flush=True)

    def on_fail(e: BaseException) -> None:
        server_box[0].should_exit = True

    app = create_app(state, _lifespan(loop, on_ready, on_fail))
    config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level=_uvicorn_level(), lifespan="on",
                            access_log=opts.access_log, timeout_graceful_shutdown=max(int(opts.grace_period_s), 1))
    server = uvicorn.Server(config)
    server_box.append(server)
    print(f"ad serve: building {cfg.model}; listening on http://{opts.host}:{opts.port} (GET /health answers 200 "
          "once the model is ready)", flush=True)
    # two busy threads (engine, event loop) share the GIL: hand it over within 1 ms, not 5, so a step never
    # waits long behind the streaming of the previous step's tokens
    sys.setswitchinterval(0.001)
    with _signals_end_gracefully():
        server.run()
    loop.stop()
    if loop.failed is not None:
        if isinstance(loop.failed, ADError):
            raise loop.failed
        raise ADError(f"The model could not be built, so the server stopped: {type(loop.failed).__name__}: "
                      f"{loop.failed}") from loop.failed


def _lifespan(loop: Any, on_ready: Any, on_fail: Any) -> Any:
    """Start the engine thread with the event loop; publish the tokenizer and limits once it is ready; stop it."""
    import asyncio

    @contextlib.asynccontextmanager
    async def lifespan(_: Any):
        aio = asyncio.get_running_loop()

        def failed(e: BaseException) -> None:
            if not isinstance(e, ADError):  # an ADError is printed once, by the CLI, when the server stops
                log.error("model build failed: %s", e)
            aio.call_soon_threadsafe(on_fail, e)

        loop.start(aio, failed)

        async def wait_ready() -> None:
            while not loop.ready.is_set() and loop.failed is None:
                await asyncio.sleep(0.05)
            if loop.ready.is_set():
                on_ready()

        task = aio.create_task(wait_ready())
        try:
            yield
        finally:
            task.cancel()
            loop.stop()

    return lifespan


@contextlib.contextmanager
def _signals_end_gracefully():
    """uvicorn drains on SIGTERM / SIGINT, then raises the signal again for the previous handler: make that one a
    no-op, so a drained server exits 0 instead of dying by the signal after its clean shut-down."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _uvicorn_level() -> str:
    level = os.environ.get("AUTO_DEPLOY_LOG_LEVEL", "INFO").upper()
    return {"DEBUG": "debug", "INFO": "info", "WARNING": "warning", "ERROR": "error"}.get(level, "info")


def parse_served_names(value: Optional[str]) -> list[str]:
    return [v for v in (value or "").split(",") if v]
