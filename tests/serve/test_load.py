"""Real use: 200 concurrent streams with a fifth of the clients leaving mid-stream; a bounded queue (429 with
Retry-After); SIGTERM stops accepting, drains what is in flight, and exits 0."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import threading
import time

import openai

from autodeploy_cli.runtime.engine import SamplingParams
from tests.serve.conftest import http as http_call, start_server

IDS = {"return_token_ids": True, "ignore_eos": True}


def _wait_idle(server, timeout: float = 20.0) -> dict[str, float]:
    deadline = time.time() + timeout
    while True:
        m = server.metrics()
        if (m["ad_requests_running"], m["ad_requests_waiting"], m["ad_kv_pages_used"]) == (0, 0, 0) or \
                time.time() > deadline:
            return m
        time.sleep(0.1)


def test_200_streams_with_a_fifth_disconnecting(served, offline):
    server, _ = served
    name = served[1][0].split("=", 1)[1]
    prompts = [[(5 * i + 3 * j) % 250 + 3 for j in range(4 + i % 7)] for i in range(10)]
    want = [c.token_ids for c in offline.generate(prompts, SamplingParams(max_tokens=12, ignore_eos=True))]
    before = _wait_idle(server)

    async def one(client, i: int):
        leaves = i % 5 == 0  # asks for more than it will read: still running on the server when it leaves
        stream = await client.completions.create(model=name, prompt=prompts[i % 10], max_tokens=50 if leaves else 12,
                                                 temperature=0, stream=True, extra_body=IDS)
        got: list[int] = []
        async for chunk in stream:
            if chunk.choices:
                got += getattr(chunk.choices[0], "token_ids", None) or []
            if leaves and len(got) >= 2:
                await stream.close()  # the client goes away mid-stream
                return None
        return got

    async def main():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        try:
            return await asyncio.gather(*[one(client, i) for i in range(200)])
        finally:
            await client.close()

    results = asyncio.run(main())
    finished = {i: r for i, r in enumerate(results) if r is not None}
    assert len(finished) == 160
    assert all(r == want[i % 10] for i, r in finished.items())
    after = _wait_idle(server)
    assert (after["ad_requests_running"], after["ad_requests_waiting"], after["ad_kv_pages_used"]) == (0, 0, 0)
    assert after["ad_kv_pages_free"] == after["ad_kv_pages_total"] > 0  # every page back in the pool

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    # a leaver is aborted unless the server finished its 50 tokens before the (CPU-starved) client read two chunks
    aborted = delta('ad_request_finish_total{reason="abort"}')
    assert 20 <= aborted <= 40 and aborted + delta('ad_request_finish_total{reason="length"}') == 200
    assert delta('ad_requests_total{route="/v1/completions",status="200"}') == 200
    assert delta("ad_generation_tokens_total") >= 160 * 12
    assert delta("ad_time_to_first_token_seconds_count") == 200
    assert server.get("/health")[0] == 200  # still up, and still right
    code, _, out = server.post("/v1/completions", {"prompt": prompts[3], "max_tokens": 12, "temperature": 0, **IDS})
    assert code == 200 and out["choices"][0]["token_ids"] == want[3]


def _stream(url: str, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    return conn, conn.getresponse()


def test_queue_limit_and_graceful_sigterm(tiny_dir, tmp_path):
    server = start_server(tiny_dir("llama"), tmp_path, "max_batch_size=1", "max_seq_len=512", "--max-queue", "2",
                          "--grace-period", "60")
    long = {"prompt": [5, 6], "max_tokens": 60, "temperature": 0, **IDS}
    longest = {**long, "max_tokens": 400, "stream": True}
    try:
        # a client that leaves after its first token: aborted, its pages back at once (480 tokens: on a slow machine
        # a short request could finish before the server sees the disconnect)
        conn, resp = _stream(server.url, {**long, "max_tokens": 480, "stream": True})
        assert resp.readline().startswith(b"data: ")
        conn.close()
        m = _wait_idle(server)
        assert m['ad_request_finish_total{reason="abort"}'] == 1 and m["ad_kv_pages_used"] == 0
        conn, resp = _stream(server.url, longest)
        first = resp.readline()  # A runs (batch of one) ...
        assert first.startswith(b"data: ")
        done: dict[str, tuple] = {}

        def wait(tag: str) -> None:
            code, _, body = http_call("POST", server.url + "/v1/completions", json.dumps(long).encode(), timeout=60)
            done[tag] = (code, json.loads(body), time.time())

        waiters = [threading.Thread(target=wait, args=(t,)) for t in "BC"]
        for t in waiters:
            t.start()
        while server.metrics()["ad_requests_waiting"] < 2:  # ... B and C wait: the queue is full
            time.sleep(0.01)
        code, headers, err = server.post("/v1/completions", long)
        assert code == 429 and headers["retry-after"] == "1" and err["error"]["type"] == "rate_limit_exceeded"
        server.proc.send_signal(signal.SIGTERM)
        refused_at = None
        give_up = time.time() + 5
        while refused_at is None and time.time() < give_up:
            try:
                server.get("/health")
                time.sleep(0.02)
            except OSError:
                refused_at = time.time()  # no new connections once draining
        rest = resp.read().decode()
        tokens = sum(len(json.loads(line[6:])["choices"][0].get("token_ids", []))
                     for line in (first.decode() + rest).splitlines()
                     if line.startswith("data: {") and json.loads(line[6:])["choices"])
        assert tokens == 400 and rest.rstrip().endswith("data: [DONE]")  # A finished in the drain
        conn.close()
        for t in waiters:
            t.join(60)
        assert [done[t][0] for t in "BC"] == [200, 200]
        assert all(len(done[t][1]["choices"][0]["token_ids"]) == 60 for t in "BC")
        assert refused_at is not None and refused_at < done["C"][2]
        assert server.proc.wait(60) == 0
    finally:
        if server.proc.poll() is None:
            server.stop(signal.SIGKILL)
