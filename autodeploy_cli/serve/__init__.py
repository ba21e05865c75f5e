"""`ad serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over the built-in runtime.

protocol.py (request models, error bodies, logprob shapes), requests.py (OpenAI request -> engine requests, checked),
engine_loop.py (the engine on its own thread), handlers.py (completions and chat, JSON and SSE), detok.py
(streamed text), metrics.py (Prometheus), app.py (routes), server.py (uvicorn, start-up, graceful shut-down).
Nothing here is imported by `ad --help`; the runtime knows nothing of HTTP.
"""
