"""A real `ad serve` process on a free loopback port, shared by the serve tests (one start per session)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[serve]'")
pytest.importorskip("openai", reason="the test extra is not installed: pip install -e '.[test]'")

ROOT = Path(__file__).resolve().parents[2]
# the tiny Llama of tests/tiny_models.py with the shipped byte tokenizer (and its chat template)
MODEL_ARGS = ["skip_loading_weights=true", "dtype=float32", "max_seq_len=64", "attn_page_size=4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, timeout: float = 30) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path
    health_codes: list[int] = field(default_factory=list)

    def get(self, path: str) -> tuple[int, bytes]:
        code, _, body = http("GET", self.url + path)
        return code, body

    def post(self, path: str, obj) -> tuple[int, dict, dict]:
        body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        code, headers, data = http("POST", self.url + path, body)
        return code, headers, json.loads(data)

    def metrics(self) -> dict[str, float]:
        out = {}
        for line in self.get("/metrics")[1].decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def start_server(model_dir: Path, tmp: Path, *extra: str, timeout: float = 180) -> Server:
    port = free_port()
    log = tmp / f"serve_{port}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AUTO_DEPLOY_LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "autodeploy_cli", "serve", str(model_dir), "--port", str(port), *MODEL_ARGS, *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ad serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            code, _ = server.get("/health")
        except OSError:
            time.sleep(0.1)
            continue
        server.health_codes.append(code)
        if code == 200:
            return server
        time.sleep(0.05)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"ad serve did not become healthy in {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def served(tiny_dir, tmp_path_factory):
    """(server, config overrides): one `ad serve` of the tiny Llama for the whole session, max_batch_size 16."""
    model_dir = tiny_dir("llama")
    server = start_server(model_dir, tmp_path_factory.mktemp("serve"), "max_batch_size=16")
    yield server, [f"model={model_dir}", *MODEL_ARGS, "max_batch_size=16"]
    assert server.stop() == 0, server.log.read_text()[-3000:]


@pytest.fixture(scope="session")
def offline(served):
    """An in-process engine on the same config (same seeded weights): the offline oracle."""
    from autodeploy_cli.config.loader import resolve
    from autodeploy_cli.llm import build_engine

    return build_engine(resolve([], served[1]))
