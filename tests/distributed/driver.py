"""A multi-rank session for the tests: `python tests/distributed/driver.py JOBS.json OUT.pt`.

Real processes: this process is rank 0 (ad's launcher spawns the others, or joins a torchrun environment); for every
job (a list of config overrides) rank 0 builds the engine through `autodeploy_cli.llm.build_engine` (the other ranks
follow), takes the logits of a fixed prefill and the greedy tokens of a few prompts, and saves them all to OUT.pt
with each build's sharding report. One session serves many jobs, so the processes start once.

Test hooks, read at import time (spawned ranks import this module too): AD_TEST_FAIL_RANK=R makes rank R raise
inside load_weights, writing the time it raised to $AD_TEST_FAIL_STAMP; AD_TEST_PID_DIR gets one file per process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = [[5, 9, 200, 31, 7, 77, 12], [42, 3], [100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 2]]
PREFILL_SEED = 0


def _inject_failure() -> None:
    if os.environ.get("AD_TEST_PID_DIR"):
        (Path(os.environ["AD_TEST_PID_DIR"]) / str(os.getpid())).touch()
    rank = os.environ.get("AD_TEST_FAIL_RANK")
    if rank is None:
        return
    from transforms.load_weights import LoadWeights

    original = LoadWeights.apply

    def apply(self, gm, ctx):
        if ctx.rank == int(rank):
            import time

            Path(os.environ["AD_TEST_FAIL_STAMP"]).write_text(repr(time.time()))
            raise RuntimeError(f"injected failure on rank {ctx.rank} while loading weights")
        return original(self, gm, ctx)

    LoadWeights.apply = apply


_inject_failure()


def measure(cfg) -> dict:
    """Logits of a fixed 2 x 9 prefill (every position) and greedy tokens of PROMPTS, on rank 0."""
    import torch

    from autodeploy_cli.llm import build_engine
    from autodeploy_cli.runtime.engine import SamplingParams

    engine = build_engine(cfg)
    vocab = engine.vocab_size
    ids = torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(PREFILL_SEED))
    logits = engine.iface.run_prefill(engine.model, ids.to(engine.iface.device), gather="all").float().cpu()
    out = engine.generate(PROMPTS, SamplingParams(max_tokens=6, ignore_eos=True))
    return {"logits": logits, "tokens": [c.token_ids for c in out],
            "sharding": engine.build_result.report.get("sharding"),
            "replays": getattr(engine.model, "replays", None)}


def main(jobs_path: str, out_path: str) -> None:
    import torch

    from autodeploy_cli.config.loader import resolve
    from autodeploy_cli.distributed import launch
    from autodeploy_cli.llm import follow

    jobs = json.loads(Path(jobs_path).read_text())
    configs = {name: resolve([], overrides) for name, overrides in jobs.items()}

    def leader() -> None:
        torch.save({name: measure(cfg) for name, cfg in configs.items()}, out_path)

    launch.run(next(iter(configs.values())), leader, follow)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
