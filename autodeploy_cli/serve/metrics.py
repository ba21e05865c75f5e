"""Prometheus metrics of the server (`GET /metrics`), in a registry of its own (two apps in one process do not mix).

Counted on the event loop as events arrive: requests by HTTP status and by finish reason, prompt and generated
tokens, TTFT / inter-token / end-to-end latency histograms; read at scrape time: running and waiting requests, KV
pages used and free, engine steps.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)


class ServerMetrics:
    def __init__(self, loop_state: Any):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("ad_requests", "HTTP requests by route and status code", ["route", "status"],
                                registry=r)
        self.finished = Counter("ad_request_finish", "Engine requests by finish reason "
                                "(stop, length, abort, error)", ["reason"], registry=r)
        self.prompt_tokens = Counter("ad_prompt_tokens", "Prompt tokens of admitted requests", registry=r)
        self.generation_tokens = Counter("ad_generation_tokens", "Generated tokens streamed out", registry=r)
        self.ttft = Histogram("ad_time_to_first_token_seconds", "Arrival to first token", buckets=_LATENCY,
                              registry=r)
        self.itl = Histogram("ad_inter_token_latency_seconds", "Gap between consecutive tokens of a request",
                             buckets=_ITL, registry=r)
        self.e2e = Histogram("ad_e2e_request_latency_seconds", "Arrival to last token", buckets=_LATENCY, registry=r)
        engine = lambda: loop_state.engine  # noqa: E731 - read at scrape time
        gauges = {
            "ad_requests_running": ("Requests in the running batch", lambda: loop_state.num_running),
            "ad_requests_waiting": ("Requests waiting to be scheduled", lambda: loop_state.num_waiting),
            "ad_kv_pages_free": ("Free KV-cache pages", lambda: engine().pages.num_free if engine() else 0),
            "ad_kv_pages_used": ("KV-cache pages in use", lambda: (engine().pages.num_pages - engine().pages.num_free)
                                 if engine() else 0),
            "ad_kv_pages_total": ("KV-cache pages in the pool", lambda: engine().pages.num_pages if engine() else 0),
            "ad_engine_steps": ("Engine steps run", lambda: loop_state.steps),
        }
        for name, (doc, fn) in gauges.items():
            Gauge(name, doc, registry=r).set_function(fn)

    def on_events(self, events: list[tuple[Any, tuple]]) -> None:
        """Called on the event loop with each step's events, before they reach the request handlers."""
        t = time.perf_counter()
        for group, (kind, index, payload) in events:
            if kind == "token":
                sub = group.subs[index]
                self.generation_tokens.inc(len(payload.new_token_ids))
                if sub.last_token_at is None:
                    self.ttft.observe(t - group.arrival)
                else:
                    self.itl.observe(t - sub.last_token_at)
                sub.last_token_at = t
            elif kind == "done":
                self.finished.labels(payload.finish_reason or "error").inc()
                self.e2e.observe(t - group.arrival)
            elif kind == "aborted":
                self.finished.labels("abort").inc()
            elif kind == "fail":
                self.finished.labels("error").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
