"""Starting and ending the ranks (real processes, gloo): `ad` spawns them or joins a torchrun environment; checks
before anything is built; a rank that raises ends every rank with its message; the anchor's documented manual
plan applies as written and `ad build --verify world_size=2` compares with HF eager."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autodeploy_cli.cli import app
from autodeploy_cli.errors import ADError
from tests.distributed.sessions import ROOT, env, overrides, run_driver

ANCHOR = ROOT / "tests" / "fixtures" / "anchor"
PROMPT_ARGS = ["prompt.chat_template=false", "prompt.sp_kwargs.max_tokens=6", "prompt.sp_kwargs.ignore_eos=true"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its new parent) is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_heads_that_do_not_split_fail_before_any_rank_starts(tiny_dir):
    result = CliRunner().invoke(app, ["run", *overrides(tiny_dir("llama"), 3)])
    assert result.exit_code == 2
    assert ("`world_size: 3` does not fit" in result.output and "num_attention_heads=4 (attention is split by heads)"
            in result.output and "Valid world sizes for this model: 1, 2, 4." in result.output)


def test_missing_backend_and_too_few_gpus_are_caught_first(monkeypatch):
    import torch
    import torch.distributed as dist

    from autodeploy_cli.distributed.launch import preflight

    monkeypatch.setattr(dist, "is_nccl_available", lambda: False)
    with pytest.raises(ADError, match=r"`world_size: 2` on GPUs needs the NCCL backend of torch.distributed"):
        preflight(2, "cuda", 2)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ADError, match=r"`world_size: 4` needs 4 GPUs on this machine \(one per rank\) but 1 is "
                                      r"visible.*Lower `world_size` to at most 1"):
        preflight(4, "cuda", 4)
    monkeypatch.setattr(dist, "is_gloo_available", lambda: False)
    with pytest.raises(ADError, match=r"on the CPU needs the gloo backend"):
        preflight(2, "cpu", 2)


def test_a_raising_rank_ends_every_rank_with_its_message(tiny_dir, tmp_path):
    pids, stamp = tmp_path / "pids", tmp_path / "failed_at"
    pids.mkdir()
    done = run_driver({"llama": overrides(tiny_dir("llama"), 2)}, tmp_path, timeout=300,
                      extra_env={"AD_TEST_FAIL_RANK": "1", "AD_TEST_FAIL_STAMP": str(stamp),
                                 "AD_TEST_PID_DIR": str(pids)})
    ended = time.time()
    assert done.returncode == 2  # the failed rank's error is a user-facing one (a transform failed)
    assert ("ad: error: rank 1 of 2 failed: Transform `load_weights` (stage weight_load) failed: RuntimeError: "
            "injected failure on rank 1 while loading weights.") in done.stderr
    assert ended - float(stamp.read_text()) < 30
    ranks = [int(p.name) for p in pids.iterdir()]
    assert len(ranks) == 2
    deadline = time.time() + 10
    while any(_alive(p) for p in ranks) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in ranks), "a rank outlived the run"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_environment_joins_instead_of_spawning(tiny_dir):
    args = ["run", "--json", "--prompt", "The quick brown fox", "--prompt", "a", *overrides(tiny_dir("llama"), 1),
            *PROMPT_ARGS]  # world_size comes from WORLD_SIZE
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "autodeploy_cli", *args], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), LOCAL_WORLD_SIZE="2",
                                      MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
             for r in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert outs[1][0] == ""  # rank 0 owns all output
    doc = json.loads(outs[0][0])
    ref = CliRunner().invoke(app, args)  # one rank, in this process (no launcher environment here)
    assert ref.exit_code == 0, ref.output
    assert [c["token_ids"] for c in doc["completions"]] == [c["token_ids"] for c in json.loads(ref.stdout)["completions"]]


def test_the_documented_manual_plan_applies_as_written_and_verifies(tiny_dir, tmp_path):
    """AutoDeploy's Nemotron Nano v3 sharding section on a tiny Nemotron with the documented head_dim of 128."""
    model = tiny_dir("nemotron", head_dim=128)
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "autodeploy_cli", "build", "--verify", "--report", str(report),
                           "--config", str(ANCHOR / "nano_v3_sharding.yaml"), *overrides(model, 2)],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(report.read_text())
    assert doc["verify"]["ok"] and doc["verify"]["rows"]  # rank 0's logits (gathered) == HF eager, every transform
    rows = {d["weight"]: d for d in doc["sharding"]["decisions"]}
    layer0 = {k.split("layers.0.")[1]: (v["style"], v.get("plan_entry")) for k, v in rows.items() if "layers.0." in k}
    assert layer0 == {"self_attn.q_proj.weight": ("colwise", "q_proj"), "self_attn.k_proj.weight": ("colwise", "k_proj"),
                      "self_attn.v_proj.weight": ("colwise", "v_proj"), "self_attn.o_proj.weight": ("rowwise", "o_proj"),
                      "mlp.up_proj.weight": ("colwise", "up_proj"), "mlp.down_proj.weight": ("rowwise", "down_proj")}
    assert rows["model.layers.0.self_attn.q_proj.weight"]["local_shape"] == [256, 64]  # 2 heads of 128 per rank
    assert rows["lm_head.weight"]["style"] == "replicated"  # sharding_dims [ep, bmm]: no tp heuristic
    notes = doc["sharding"]["notes"]
    assert "manual tp_plan `in_proj: mamba` waits for SSM layers (ad has none yet; this model has no linear it " \
           "matches)" in notes
    assert "manual tp_plan `fc1_latent_proj: gather` matches no linear of this model" in notes
    assert "sharding: world_size 2: colwise 8, replicated 2, rowwise 4" in done.stdout  # + embedding, lm_head


def test_plan_reports_per_rank_bytes():
    out = CliRunner().invoke(app, ["build", "--plan", "--model", "meta-llama/Llama-3.1-8B-Instruct", "--gpu-mem",
                                   "141GB", "world_size=2"]).stdout
    assert ("  configured world_size 2, per rank: 8,030,261,248 bytes of weights (8.03 GB), 65,536 bytes of KV per "
            "token (4 KV head(s)),") in out
    out = CliRunner().invoke(app, ["build", "--plan", "--model", "meta-llama/Llama-3.1-8B-Instruct", "--gpu-mem",
                                   "141GB", "world_size=16"]).stdout
    assert "(1 KV head(s), each shared by 2 ranks)" in out
    out = CliRunner().invoke(app, ["build", "--plan", "--model", "meta-llama/Llama-3.1-8B-Instruct", "--gpu-mem",
                                   "141GB", "world_size=3"]).stdout
    assert "Valid world sizes for this model: 1, 2, 4, 8, 16, 32." in out



def test_ctrl_c_ends_every_rank(tiny_dir):
    import signal

    cmd = [sys.executable, "-m", "autodeploy_cli", "run", "--prompt", "hello",
           *overrides(tiny_dir("llama"), 2, "max_seq_len=4096", "max_batch_size=1"), *PROMPT_ARGS,
           "prompt.sp_kwargs.max_tokens=4000"]
    p = subprocess.Popen(cmd, cwd=ROOT, env=env(), start_new_session=True, text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    deadline = time.time() + 120
    ranks: list[int] = []
    while len(ranks) < 2 and time.time() < deadline:  # rank 0 (this child) and its spawned rank 1
        listing = subprocess.run(["ps", "-ww", "-o", "pid=,cmd=", "-g", str(p.pid)], capture_output=True,
                                 text=True).stdout
        ranks = [int(line.split()[0]) for line in listing.splitlines()
                 if "autodeploy_cli" in line or "multiprocessing.spawn" in line]
        time.sleep(0.5)
    time.sleep(3)
    t0 = time.time()
    os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # leave nothing behind, and show what the run printed
        _, err = p.communicate()
        pytest.fail(f"the run did not end within 60 s of Ctrl-C; its stderr:\n{err}")
    assert p.returncode == 130 and "ad: interrupted" in err
    assert time.time() - t0 < 20
    time.sleep(1)
    assert len(ranks) == 2 and not any(_alive(pid) for pid in ranks)
