"""What one GPU can test of the multi-rank runtime (marked gpu): the process groups on CUDA (NCCL device group,
gloo CPU group, the watchdog) and rank 0's step messages, including the device-side token feed of overlapped
greedy steps broadcast over NCCL, around a CUDA-graph engine: the tokens equal the plain single-rank engine's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.distributed.sessions import ROOT, env

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
PROMPTS = [[5, 9, 200, 31, 7, 77, 12], [42, 3], [100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 2]]
SCRIPT = """
import json, sys
from autodeploy_cli.config.loader import resolve
from autodeploy_cli.distributed import broadcast, groups
from autodeploy_cli.llm import build_engine
from autodeploy_cli.runtime.engine import SamplingParams
store = groups.make_store("127.0.0.1", 0, 1, True)
groups.init(0, 1, 0, store, "127.0.0.1", store.port, "cuda")
cfg = resolve([], json.loads(sys.argv[1]))
engine = build_engine(cfg)
engine.model = broadcast.LeaderModel(engine.model, engine.iface)  # rank 0's path: every step sent (to no one)
out = engine.generate(json.loads(sys.argv[2]), SamplingParams(max_tokens=8, ignore_eos=True))
print(json.dumps({"tokens": [c.token_ids for c in out], "replays": getattr(engine.model, "replays", None)}))
broadcast.send_stop()
groups.shutdown()
"""


def test_nccl_one_rank_engine_with_step_messages(tiny_dir):
    from autodeploy_cli.config.loader import resolve
    from autodeploy_cli.llm import build_engine
    from autodeploy_cli.runtime.engine import SamplingParams

    overrides = [f"model={tiny_dir('llama')}", "skip_loading_weights=true", "device=cuda", "dtype=float32",
                 "max_seq_len=64", "max_batch_size=4", "attn_page_size=4", "cuda_graph_batch_sizes=[1,2,4]"]
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(overrides), json.dumps(PROMPTS)], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    ref = build_engine(resolve([], overrides)).generate(PROMPTS, SamplingParams(max_tokens=8, ignore_eos=True))
    assert got["tokens"] == [c.token_ids for c in ref]
    assert got["replays"] > 0
