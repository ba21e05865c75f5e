"""`ad serve` on the command line: trtllm-serve's flags map onto the config; a failed build ends the server."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml
from typer.testing import CliRunner

from autodeploy_cli.cli import app
from tests.serve.conftest import ROOT, free_port


def test_anchor_flags_map_onto_the_config(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("max_seq_len: 256\n")
    res = CliRunner().invoke(app, ["serve", "ad-tiny-llama", "--backend", "_autodeploy", "--extra_llm_api_options",
                                   str(extra), "--max_batch_size", "4", "--tp_size", "1", "--trust_remote_code",
                                   "--print-config"])
    assert res.exit_code == 0, res.output
    cfg = yaml.safe_load(res.output)
    assert (cfg["model"], cfg["max_seq_len"], cfg["max_batch_size"], cfg["world_size"], cfg["trust_remote_code"]) \
        == ("ad-tiny-llama", 256, 4, 1, True)
    res = CliRunner().invoke(app, ["serve", "max_seq_len=99", "--print-config"])  # an override, not a model
    assert res.exit_code == 0 and yaml.safe_load(res.output)["max_seq_len"] == 99


def test_a_failed_build_ends_the_server_with_its_error():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AUTO_DEPLOY_LOG_LEVEL": "WARNING"}
    out = subprocess.run([sys.executable, "-m", "autodeploy_cli", "serve", "--port", str(free_port()),
                          "transforms.insert_cached_attention.enabled=false"], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=180)
    assert out.returncode == 2
    assert "ad: error: ad cannot deploy this model correctly: the canonical op `auto_deploy::torch_attention` " \
           "has no cached form in this build, in layers 0, 1" in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.count("ad cannot deploy this model correctly") == 1  # printed once, as one paragraph
