"""Shared checks of the e2e tests: `ad run` / Engine greedy tokens == HF `model.generate` greedy tokens."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from autodeploy_cli.cli import app
from autodeploy_cli.config.loader import resolve
from autodeploy_cli.models.factory import ModelFactory

# 1, 19 and 34 byte tokens: with page size 4 every sequence but the first crosses page boundaries
PROMPTS = ["a", "The quick brown fox", "hi there, how are you doing today?"]
MAX_TOKENS = 10


def hf_greedy(cfg, prompts_ids: list[list[int]], max_new_tokens: int = MAX_TOKENS) -> list[list[int]]:
    """HF generate, one prompt at a time, on the same seeded random weights the pipeline loads."""
    model = ModelFactory(cfg).materialize()
    out = []
    for ids in prompts_ids:
        x = torch.tensor([ids], device=model.device)
        with torch.no_grad():
            gen = model.generate(x, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
        out.append(gen[0, x.shape[1]:].tolist())
    return out


def overrides(model_dir: Path, family: str, *extra: str) -> list[str]:
    return [f"model={model_dir}", "skip_loading_weights=true", "dtype=float32", "max_seq_len=64", "max_batch_size=4",
            *extra]


def check_ad_run(model_dir: Path, family: str, *extra: str) -> None:
    """`ad run --json` on a batch of prompts of different lengths == HF generate for each prompt alone."""
    args = overrides(model_dir, family, f"prompt.sp_kwargs.max_tokens={MAX_TOKENS}", "prompt.sp_kwargs.ignore_eos=true",
                     "prompt.chat_template=false", *extra)
    cli = ["run", "--json"] + [a for p in PROMPTS for a in ("--prompt", p)] + args
    result = CliRunner().invoke(app, cli)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    comps = doc["completions"]
    assert [c["prompt"] for c in comps] == PROMPTS
    assert [len(c["prompt_token_ids"]) for c in comps] == [1, 19, 34]
    assert all(c["finish_reason"] == "length" and c["error"] is None for c in comps)
    ref = hf_greedy(resolve([], args), [c["prompt_token_ids"] for c in comps])
    assert [c["token_ids"] for c in comps] == ref
    assert doc["timing"]["decode_tokens"] > 0


def check_engine_chunked(model_dir: Path, family: str, *extra: str) -> None:
    """The Python Engine API with chunked prefill (8 tokens per step) == HF generate."""
    from autodeploy_cli.llm import build_engine
    from autodeploy_cli.runtime.engine import SamplingParams

    cfg = resolve([], overrides(model_dir, family, "enable_chunked_prefill=true", "max_num_tokens=8", *extra))
    engine = build_engine(cfg)
    prompts = [[(7 * i + 3 * j) % 250 + 3 for j in range(n)] for i, n in enumerate((23, 2, 13))]
    comps = engine.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True))
    assert engine.stats.prefill_steps >= 5  # 38 prompt tokens, at most 8 per step
    assert [c.token_ids for c in comps] == hf_greedy(cfg, prompts)
