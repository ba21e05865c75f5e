"""A small asyncio HTTP/1.1 client for streamed OpenAI responses: POST a JSON body, yield each SSE `data:` payload
with its arrival time. Standard library only (no client package on the benchmark machine), one connection per
request (`Connection: close`), chunked or plain bodies, http and https."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from typing import Any, AsyncIterator
from urllib.parse import urlsplit


class HTTPError(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status, self.body = status, body


def _target(url: str) -> tuple[str, int, bool, str]:
    u = urlsplit(url)
    secure = u.scheme == "https"
    return u.hostname or "127.0.0.1", u.port or (443 if secure else 80), secure, (u.path or "/") + \
        (f"?{u.query}" if u.query else "")


async def _open(url: str, method: str, body: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int, dict]:
    host, port, secure, path = _target(url)
    reader, writer = await asyncio.open_connection(host, port, ssl=ssl.create_default_context() if secure else None,
                                                   limit=1 << 24)
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    writer.write(head.encode() + body)
    await writer.drain()
    status_line = await reader.readline()
    parts = status_line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise HTTPError(0, f"not an HTTP response: {status_line!r}")
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return reader, writer, int(parts[1]), headers


async def _body_chunks(reader: asyncio.StreamReader, headers: dict) -> AsyncIterator[bytes]:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)  # CRLF after each chunk
            yield data
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        while data := await reader.read(1 << 16):
            yield data


async def stream_json(url: str, payload: dict[str, Any]) -> AsyncIterator[tuple[float, dict]]:
    """(arrival time, parsed JSON) for every SSE `data:` event until `data: [DONE]` or the end of the stream."""
    reader, writer, status, headers = await _open(url, "POST", json.dumps(payload).encode())
    try:
        if status != 200:
            body = b"".join([c async for c in _body_chunks(reader, headers)])
            raise HTTPError(status, body.decode("utf-8", "replace"))
        buf = b""
        async for data in _body_chunks(reader, headers):
            t = time.perf_counter()
            buf += data
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                for line in event.splitlines():
                    if not line.startswith(b"data:"):
                        continue
                    text = line[5:].strip()
                    if text == b"[DONE]":
                        return
                    yield t, json.loads(text)
    finally:
        writer.close()


async def get_json(url: str) -> Any:
    reader, writer, status, headers = await _open(url, "GET", b"")
    try:
        body = b"".join([c async for c in _body_chunks(reader, headers)])
    finally:
        writer.close()
    if status != 200:
        raise HTTPError(status, body.decode("utf-8", "replace"))
    return json.loads(body)
