"""The serving acceptance point (issue 19) on one GPU, in one run, back to back on the same machine:

  1. offline `ad bench`            (the engine in-process)                 -> OUT/offline.json
  2. `ad serve` started, healthy, then `ad bench --url` against it         -> OUT/online.json
  3. a 16-token request's end-to-end latency (non-streamed, sequential)    -> OUT/latency_16.json
  4. the server's /metrics after the runs                                  -> OUT/server_metrics.txt
  -> OUT/summary.json: online / offline output tok/s (target >= 0.9) and the 16-token latency (target <= 0.1 s)

Default workload: Llama-3.1-8B shapes (random bf16 weights, no download), concurrency 64, ISL 1024 / OSL 128:

    python3 benchmarks/serve_bench.py --out benchmarks/results/serve_h200
    python3 benchmarks/serve_bench.py --out /tmp/s --model ad-tiny-llama --isl 32 --osl 8 --concurrency 4 \\
        --num-requests 16 --set max_batch_size=8 --set max_seq_len=128        # a smoke run on CPU

Every step logs to OUT/serve_bench.log and stdout as it goes, so a run cut short still leaves what it measured.

The GPU machine's python3.12 lacks the serve stack; fetch these cp312 wheels into .whl/ here (about 9 MB on top of
the base 21 MB; uvloop and httptools are optional speed-ups uvicorn picks up by itself, openai + jiter + distro +
sniffio only serve the tests' client; do not carry typing-extensions: an older copy shadows the machine's
newer one, and every request then failed with a 500, ImportError 'sentinel', in the session-5 run):

    bash ../shared/gpu/fetch_wheels.sh fastapi==0.115.12 starlette==0.46.2 uvicorn==0.34.2 pydantic==2.11.4 \
        pydantic-core==2.33.2 annotated-types==0.7.0 typing-inspection==0.4.0 \
        httptools==0.6.4 uvloop==0.21.0 openai==1.82.0 jiter==0.10.0 distro==1.9.0 sniffio==1.3.1
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LLAMA_8B = ["skip_loading_weights=true", "dtype=bfloat16", "max_batch_size=64", "max_seq_len=1152"]


def log(out: Path, msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    with (out / "serve_bench.log").open("a") as f:
        f.write(line + "\n")


def ad(*args: str) -> list[str]:
    return [sys.executable, "-m", "autodeploy_cli", *args]


def run_logged(out: Path, cmd: list[str], name: str, timeout: float) -> int:
    log(out, f"{name}: {' '.join(cmd)}")
    with (out / f"{name}.log").open("w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
    log(out, f"{name}: exit {rc} (log: {out / (name + '.log')})")
    return rc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict, timeout: float = 120) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> float:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"ad serve exited with {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return time.time() - t0
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"ad serve was not healthy after {timeout} s")


def latency_16(url: str, model: str, reps: int) -> dict:
    """Sequential non-streamed requests: a 16-token prompt, 16 new tokens (EOS ignored), client wall time."""
    body = {"model": model, "prompt": [(37 * i) % 250 + 3 for i in range(16)], "max_tokens": 16,
            "temperature": 0, "ignore_eos": True}
    for _ in range(3):  # warm: connection set-up, first-request paths
        post(url + "/v1/completions", body)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = post(url + "/v1/completions", body)
        times.append(time.perf_counter() - t0)
        assert out["usage"]["completion_tokens"] == 16, out
    return {"requests": reps, "prompt_tokens": 16, "max_tokens": 16, "e2e_s": sorted(times),
            "e2e_median_s": statistics.median(times), "e2e_mean_s": statistics.fmean(times),
            "e2e_min_s": min(times), "e2e_max_s": max(times)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="folder for every JSON and log of the run")
    p.add_argument("--model", default="meta-llama/Llama-3.1-8B")
    p.add_argument("--set", action="append", default=None, help="config override (repeatable); default: "
                   + " ".join(LLAMA_8B))
    p.add_argument("--isl", type=int, default=1024)
    p.add_argument("--osl", type=int, default=128)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--num-requests", type=int, default=256)
    p.add_argument("--latency-reps", type=int, default=20)
    p.add_argument("--health-timeout", type=float, default=1200)
    return p.parse_args()


def compare(out: Path, lat: dict) -> dict:
    """The acceptance numbers: online / offline output tok/s, TTFT, ITL, the 16-token latency."""
    offline = json.loads((out / "offline.json").read_text())["runs"]["ad"]
    online = json.loads((out / "online.json").read_text())["runs"]["online"]
    ratio = online["output_throughput_tok_s"] / offline["output_throughput_tok_s"]
    return {
        "offline_output_tok_s": offline["output_throughput_tok_s"], "online_output_tok_s":
        online["output_throughput_tok_s"], "online_over_offline": ratio, "target_ratio": 0.9,
        "ratio_ok": ratio >= 0.9, "offline_ttft_ms": offline["ttft_ms"], "online_ttft_ms": online["ttft_ms"],
        "offline_itl_ms": offline["itl_ms"], "online_itl_ms": online["itl_ms"],
        "latency_16_median_s": lat["e2e_median_s"], "target_latency_s": 0.1,
        "latency_ok": lat["e2e_median_s"] <= 0.1,
        "failed_requests": {"offline": offline["num_requests_failed"], "online": online["num_requests_failed"]},
    }


def main() -> int:
    a = parse_args()
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: nothing to fetch, and no hub retries
    overrides = a.set if a.set is not None else LLAMA_8B
    work = ["--isl", str(a.isl), "--osl", str(a.osl), "--concurrency", str(a.concurrency),
            "--num-requests", str(a.num_requests)]
    summary: dict = {"model": a.model, "overrides": overrides, "isl": a.isl, "osl": a.osl,
                     "concurrency": a.concurrency, "num_requests": a.num_requests}

    rc = run_logged(out, ad("bench", "--model", a.model, *overrides, *work, "--output", str(out / "offline.json")),
                    "offline", 3600)
    if rc != 0:
        return rc
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = ad("serve", a.model, "--port", str(port), *overrides)
    log(out, f"serve: {' '.join(cmd)}")
    serve_log = (out / "serve.log").open("w")
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=serve_log, stderr=subprocess.STDOUT)
    try:
        summary["server_ready_s"] = wait_healthy(url, server, a.health_timeout)
        log(out, f"serve: healthy after {summary['server_ready_s']:.1f} s at {url}")
        rc = run_logged(out, ad("bench", "--url", url, "--model", a.model, *overrides, *work, "--output",
                                str(out / "online.json")), "online", 3600)
        if rc != 0:
            return rc
        lat = latency_16(url, a.model, a.latency_reps)
        (out / "latency_16.json").write_text(json.dumps(lat, indent=2) + "\n")
        log(out, f"latency: 16-token request e2e median {lat['e2e_median_s'] * 1e3:.1f} ms "
                 f"(min {lat['e2e_min_s'] * 1e3:.1f}, max {lat['e2e_max_s'] * 1e3:.1f})")
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            (out / "server_metrics.txt").write_bytes(r.read())
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            summary["server_exit"] = server.wait(120)
        except subprocess.TimeoutExpired:
            server.kill()
            summary["server_exit"] = "killed after 120 s"
        serve_log.close()
    summary.update(compare(out, lat))
    ratio = summary["online_over_offline"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(out, f"summary: online {summary['online_output_tok_s']:.0f} / offline {summary['offline_output_tok_s']:.0f} "
             f"output tok/s = {ratio:.3f} (target >= 0.9); 16-token e2e {lat['e2e_median_s'] * 1e3:.1f} ms "
             f"(target <= 100 ms) -> {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
