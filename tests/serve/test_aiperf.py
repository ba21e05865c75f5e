"""aiperf (NVIDIA's serving benchmark) against `ad serve` on loopback for a few streamed requests.

aiperf pins rich~=14.1 and huggingface-hub<2, which conflict with ad's own environment, so it lives in its own venv:
`python -m venv .venv-aiperf && .venv-aiperf/bin/pip install aiperf==0.13.0` (.ci/run does this), or point
AD_AIPERF at an aiperf executable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.serve.conftest import ROOT


def _aiperf() -> str | None:
    for candidate in (os.environ.get("AD_AIPERF"), str(ROOT / ".venv-aiperf" / "bin" / "aiperf"), shutil.which("aiperf")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def test_aiperf_profiles_ad_serve(served, tmp_path):
    exe = _aiperf()
    if exe is None:
        pytest.skip("aiperf is not installed: its pins (rich~=14.1, huggingface-hub<2) conflict with ad's "
                    "environment; install it in its own venv: python -m venv .venv-aiperf && "
                    ".venv-aiperf/bin/pip install aiperf==0.13.0 (or set AD_AIPERF)")
    server, overrides = served
    model_dir = overrides[0].split("=", 1)[1]
    out = tmp_path / "aiperf"
    # aiperf's offline mode only reads tokenizers from the HF cache; an absolute local path loads without it
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    cmd = [exe, "profile", "--model", model_dir, "--tokenizer", model_dir, "--url", server.url.removeprefix("http://"),
           "--endpoint-type", "completions", "--streaming", "--synthetic-input-tokens-mean", "16",
           "--synthetic-input-tokens-stddev", "0", "--output-tokens-mean", "8", "--output-tokens-stddev", "0",
           "--extra-inputs", "ignore_eos:true", "--concurrency", "2", "--request-count", "4",
           "--use-server-token-count", "--output-artifact-dir", str(out), "--ui-type", "none"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    report = json.loads((out / "profile_export_aiperf.json").read_text())
    assert report["request_count"]["avg"] == 4
    assert report["output_sequence_length"]["avg"] == 8 and report["input_sequence_length"]["avg"] == 16
    assert report["time_to_first_token"]["count"] == 4 and report["output_token_throughput"]["avg"] > 0
    assert not report.get("error_summary")
