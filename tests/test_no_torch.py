"""`ad --help` and `ad build --print-config` import no torch: they run with torch made unimportable."""

from __future__ import annotations

import os
import subprocess
import sys

BLOCK_TORCH = (
    "import sys\n"
    "class _NoTorch:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ImportError('torch is blocked in this test')\n"
    "sys.meta_path.insert(0, _NoTorch())\n"
)


def _ad(args: list[str], block: bool) -> subprocess.CompletedProcess:
    code = (BLOCK_TORCH if block else "") + f"import sys; sys.argv = ['ad', *{args!r}]\nfrom autodeploy_cli.cli import main\nmain()\n"
    env = {**os.environ, "AUTO_DEPLOY_LOG_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_blocker_really_blocks_torch():
    out = subprocess.run([sys.executable, "-c", BLOCK_TORCH + "import torch"], capture_output=True, text=True)
    assert out.returncode != 0 and "torch is blocked" in out.stderr


def test_help_without_torch():
    out = _ad(["--help"], block=True)
    assert out.returncode == 0, out.stderr
    assert "build" in out.stdout and "run" in out.stdout


def test_print_config_without_torch_equals_with_torch():
    args = ["build", "--print-config", "max_seq_len=256", "attn_backend=torch"]
    blocked, free = _ad(args, block=True), _ad(args, block=False)
    assert blocked.returncode == 0, blocked.stderr
    assert free.returncode == 0, free.stderr
    assert blocked.stdout == free.stdout
    assert "max_seq_len: 256" in blocked.stdout and "backend: torch" in blocked.stdout
