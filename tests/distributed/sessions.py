"""Running the multi-rank driver (tests/distributed/driver.py) in a subprocess and reading its results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import torch

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().parent / "driver.py"
BASE = ["skip_loading_weights=true", "dtype=float32", "device=cpu", "max_seq_len=64", "max_batch_size=4",
        "attn_page_size=4"]


def overrides(model_dir: Path, world_size: int, *extra: str) -> list[str]:
    return [f"model={model_dir}", f"world_size={world_size}", *BASE, *extra]


def env(**extra: str) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # keep carried packages
    out = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "AUTO_DEPLOY_LOG_LEVEL": "WARNING",
           "HF_HUB_OFFLINE": "1"}
    out.update(extra)
    return out


def run_driver(jobs: dict[str, list[str]], tmp: Path, timeout: int = 600,
               extra_env: Optional[dict] = None) -> subprocess.CompletedProcess:
    jobs_path, out_path = tmp / "jobs.json", tmp / "out.pt"
    jobs_path.write_text(json.dumps(jobs))
    return subprocess.run([sys.executable, str(DRIVER), str(jobs_path), str(out_path)], env=env(**(extra_env or {})),
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def session(jobs: dict[str, list[str]], tmp: Path) -> dict[str, Any]:
    """Every job's logits, tokens and sharding report, measured on rank 0 of a real multi-process run."""
    done = run_driver(jobs, tmp)
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(tmp / "out.pt", weights_only=False)


def measure_here(overrides_: list[str]) -> dict[str, Any]:
    """The same measurement on one rank, in this process."""
    from autodeploy_cli.config.loader import resolve
    from tests.distributed.driver import measure

    return measure(resolve([], overrides_))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()
