"""`ad run`: build the model, generate completions for prompts with the built-in runtime, print them and a timing line.

Prompts: every `--prompt` once, or else `prompt.queries` repeated/truncated to `prompt.batch_size` (the anchor's
rule). Sampling: `prompt.sp_kwargs.*`. Text prompts go through the tokenizer's chat template when it has one and
`prompt.chat_template` is true.
"""

from __future__ import annotations

import json
from typing import Any

import typer

from autodeploy_cli.config.schema import ADConfig
from autodeploy_cli.errors import ADError


def select_prompts(cfg: ADConfig, prompts: list[str]) -> list[str]:
    """`--prompt` values as given, else the config's queries cycled to prompt.batch_size."""
    if prompts:
        return list(prompts)
    queries = list(cfg.prompt.queries)
    n = cfg.prompt.batch_size
    if not queries or n < 1:
        raise ADError("No prompts: pass `--prompt TEXT` or set `prompt.queries` and a `prompt.batch_size` >= 1.")
    return [queries[i % len(queries)] for i in range(n)]


def timing(stats: Any, cpu_threads: Any = None) -> dict:
    decode_tps = stats.decode_tokens / stats.decode_time_s if stats.decode_time_s > 0 else None
    return {
        "cpu_threads": cpu_threads,
        "prefill_ms": round(stats.prefill_time_s * 1e3, 3),
        "prefill_tokens": stats.prefill_tokens,
        "decode_tokens": stats.decode_tokens,
        "decode_s": round(stats.decode_time_s, 4),
        "decode_tokens_per_s": None if decode_tps is None else round(decode_tps, 2),
        "steps": stats.steps,
        "max_batch": stats.max_batch,
        "preemptions": stats.num_preemptions,
    }


def timing_line(t: dict) -> str:
    tps = "n/a" if t["decode_tokens_per_s"] is None else f"{t['decode_tokens_per_s']:.1f} tok/s"
    return (f"timing: prefill {t['prefill_ms']:.1f} ms ({t['prefill_tokens']} tokens) | decode {tps} "
            f"({t['decode_tokens']} tokens in {t['decode_s']:.3f} s) | {t['steps']} steps, max batch "
            f"{t['max_batch']}, preemptions {t['preemptions']}"
            + (f" | cpu threads {t['cpu_threads']} (OMP_NUM_THREADS to change)" if t.get("cpu_threads") else ""))


def run_prompts(cfg: ADConfig, prompts: list[str], as_json: bool = False) -> None:
    """Build, generate, print. Exits with status 1 when any request failed (after printing every result)."""
    from autodeploy_cli.llm import build_engine
    from autodeploy_cli.runtime.request import SamplingParams

    from autodeploy_cli.log import build_progress

    from autodeploy_cli.config.checks import check_config
    from autodeploy_cli.models.factory import ModelFactory

    chosen = select_prompts(cfg, prompts)
    check_config(cfg)
    tokenizer = ModelFactory(cfg).tokenizer()  # text prompts need it: fail now, not after the build
    with build_progress():
        engine = build_engine(cfg, tokenizer=tokenizer)
    sampling = SamplingParams.from_config(cfg.prompt.sp_kwargs)
    completions = engine.generate(chosen, sampling, chat_template=cfg.prompt.chat_template)
    t = timing(engine.stats, engine.build_result.ctx.facts.cpu_threads)
    if as_json:
        doc = {
            "model": cfg.model,
            "completions": [
                {"prompt": c.prompt, "prompt_token_ids": c.prompt_token_ids, "text": c.text, "token_ids": c.token_ids,
                 "finish_reason": c.finish_reason, "error": c.error}
                for c in completions
            ],
            "timing": t,
            "kv_capacity_tokens": engine.kv_capacity_tokens,
        }
        typer.echo(json.dumps(doc, indent=2))
    else:
        for i, c in enumerate(completions):
            typer.echo(f"[{i}] prompt: {c.prompt!r}")
            if c.error:
                typer.secho(f"[{i}] error: {c.error}", fg=typer.colors.RED)
            else:
                typer.echo(f"[{i}] completion ({len(c.token_ids)} tokens, {c.finish_reason}): {c.text!r}")
        typer.echo(timing_line(t))
    if any(c.error for c in completions):
        raise typer.Exit(1)
