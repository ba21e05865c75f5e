"""The `ad` command line. Thin: parse -> resolve config -> call one function per command.

Heavy imports (torch, transformers) happen inside commands so `ad --help` stays fast.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from autodeploy_cli.errors import ADError

app = typer.Typer(
    name="ad",
    help="Deploy a Hugging Face causal LM for fast inference, automatically: build, run, bench, dump-graphs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
CONFIG_HELP = (
    "YAML config file; repeatable, deep-merged in the order given (later files win). "
    "Precedence: built-in default.yaml < model-registry layers < --config files < overrides."
)
OVERRIDES_HELP = (
    "Overrides after the options, highest precedence: `key.sub=value` or `--key.sub-name=value` "
    "(e.g. `max_seq_len=1024`, `--model-kwargs.num-hidden-layers=2`, `attn_backend=torch`)."
)

ConfigOpt = typer.Option(None, "--config", "-c", help=CONFIG_HELP)
YamlExtraOpt = typer.Option(None, "--yaml-extra", help="Alias of --config (AutoDeploy's name).")
ModelOpt = typer.Option(None, "--model", "-m", help="HF hub id, local HF folder, or model-registry name.")
PrintConfigOpt = typer.Option(False, "--print-config", help="Print the resolved config as YAML and exit.")


def user_errors(fn: Callable) -> Callable:
    """Print ADError as one paragraph (exit 2); internal errors keep their traceback only at DEBUG."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ADError as e:
            typer.secho(f"ad: error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.secho("ad: interrupted", err=True)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as e:  # an internal bug: one paragraph unless the user asked for the traceback
            if os.environ.get("AUTO_DEPLOY_LOG_LEVEL", "").upper() == "DEBUG":
                raise
            first = (str(e).strip().splitlines() or [""])[0]
            typer.secho(
                f"ad: internal error: {type(e).__name__}: {first} This is a bug in ad, not in your input. Re-run "
                "with AUTO_DEPLOY_LOG_LEVEL=DEBUG for the full traceback and include it in a bug report.",
                fg=typer.colors.RED, err=True,
            )
            raise typer.Exit(1) from None

    return wrapper


def resolve_config(ctx: typer.Context, config: Optional[List[Path]], yaml_extra: Optional[List[Path]],
                   model: Optional[str], print_config: bool, explicit: Optional[dict] = None):
    """`explicit`: a command's own options as nested config keys; they win over the overrides after the options."""
    from autodeploy_cli.config.layers import deep_merge, parse_overrides
    from autodeploy_cli.config.loader import resolve, to_yaml

    overrides = deep_merge(parse_overrides(ctx.args), explicit) if explicit else list(ctx.args)
    cfg = resolve(list(config or []) + list(yaml_extra or []), overrides, model=model)
    if print_config:
        typer.echo(to_yaml(cfg), nl=False)
        raise typer.Exit(0)
    return cfg


def console():
    from rich.console import Console

    return Console()


@app.command(context_settings=EXTRA, epilog=OVERRIDES_HELP)
@user_errors
def build(
    ctx: typer.Context,
    config: Optional[List[Path]] = ConfigOpt,
    yaml_extra: Optional[List[Path]] = YamlExtraOpt,
    model: Optional[str] = ModelOpt,
    print_config: bool = PrintConfigOpt,
    verify: bool = typer.Option(False, "--verify", help="Compare logits with the HF eager model after every transform."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write the build report as JSON to this file."),
    plan: bool = typer.Option(False, "--plan", help="Print a memory plan (weights, KV bytes per token, max concurrent "
                              "sequences, recommended world size) from the config alone, then exit; loads no weights."),
    gpu_mem: Optional[str] = typer.Option(None, "--gpu-mem", help="GPU memory for --plan, e.g. 141GB or 80GiB "
                                          "(default: the detected GPU)."),
) -> None:
    """Build the optimised model and print the build report (transforms, matches, timings, coverage)."""
    cfg = resolve_config(ctx, config, yaml_extra, model, print_config)
    if plan:
        from autodeploy_cli.commands.plan import print_plan

        print_plan(cfg, gpu_mem)
        return
    from autodeploy_cli.commands.ranks import on_ranks

    on_ranks(cfg, lambda: _build_and_report(cfg, verify, report))


def _build_and_report(cfg, verify: bool, report: Optional[Path]) -> None:
    from autodeploy_cli.pipeline.build import build as run_build
    from autodeploy_cli.pipeline.report import print_report, write_json

    result = run_build(cfg, verify=verify)
    print_report(result.report, console())
    if report:
        write_json(result.report, report)
        typer.echo(f"report written to {report}")
    if result.verify_failure:
        raise ADError(
            f"Verification failed: `{result.verify_failure}` is the first transform whose logits differ from the HF "
            "eager model beyond tolerance (see the table). Disable it with "
            f"`transforms.{result.verify_failure}.enabled=false` and report the model."
        )


@app.command("dump-graphs", context_settings=EXTRA, epilog=OVERRIDES_HELP)
@user_errors
def dump_graphs(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", "-o", help="Directory for one graph file per pipeline entry."),
    force: bool = typer.Option(False, "--force", help="Replace the contents of a non-empty directory."),
    config: Optional[List[Path]] = ConfigOpt,
    yaml_extra: Optional[List[Path]] = YamlExtraOpt,
    model: Optional[str] = ModelOpt,
    print_config: bool = PrintConfigOpt,
) -> None:
    """Build the model and write the graph after every transform as NNN_<stage>_<transform>.txt."""
    cfg = resolve_config(ctx, config, yaml_extra, model, print_config)
    from autodeploy_cli.commands.ranks import on_ranks
    from autodeploy_cli.pipeline.build import build as run_build

    def dump() -> None:  # rank 0's graphs
        result = run_build(cfg, dump_dir=out, force_dump=force)
        files = sorted(p for p in out.iterdir() if p.suffix == ".txt")
        typer.echo(f"wrote {len(files)} graph files to {out} ({len(result.records)} pipeline entries)")

    on_ranks(cfg, dump)


@app.command(context_settings=EXTRA, epilog=OVERRIDES_HELP)
@user_errors
def run(
    ctx: typer.Context,
    prompt: Optional[List[str]] = typer.Option(None, "--prompt", "-p", help="A prompt; repeatable (default: prompt.queries)."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of text."),
    config: Optional[List[Path]] = ConfigOpt,
    yaml_extra: Optional[List[Path]] = YamlExtraOpt,
    model: Optional[str] = ModelOpt,
    print_config: bool = PrintConfigOpt,
) -> None:
    """Build the model and generate completions for prompts with the built-in runtime."""
    cfg = resolve_config(ctx, config, yaml_extra, model, print_config)
    from autodeploy_cli.commands.ranks import on_ranks
    from autodeploy_cli.commands.run import run_prompts

    on_ranks(cfg, lambda: run_prompts(cfg, prompts=list(prompt or []), as_json=json_out))


@app.command(context_settings=EXTRA, epilog=OVERRIDES_HELP)
@user_errors
def bench(
    ctx: typer.Context,
    config: Optional[List[Path]] = ConfigOpt,
    yaml_extra: Optional[List[Path]] = YamlExtraOpt,
    model: Optional[str] = ModelOpt,
    print_config: bool = PrintConfigOpt,
    isl: Optional[int] = typer.Option(None, "--isl", help="Prompt tokens per synthetic request (benchmark.isl)."),
    osl: Optional[int] = typer.Option(None, "--osl", help="Output tokens per request, EOS ignored (benchmark.osl)."),
    num_requests: Optional[int] = typer.Option(None, "--num-requests", help="Requests to run (default 8; dataset: all)."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="Requests in flight (default max_batch_size)."),
    isl_stdev: Optional[float] = typer.Option(None, "--isl-stdev", help="Draw prompt lengths from normal(isl, stdev)."),
    osl_stdev: Optional[float] = typer.Option(None, "--osl-stdev", help="Draw output lengths from normal(osl, stdev)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the synthetic prompts and lengths (benchmark.seed)."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help='JSONL of {"prompt": ..., "max_tokens": ...} lines.'),
    baseline: Optional[List[str]] = typer.Option(None, "--baseline", help="Also run a baseline: hf | hf-compile (repeatable)."),
    mode: Optional[str] = typer.Option(None, "--mode", help="throughput (up to --concurrency in flight) | latency (one at a time)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write every metric + config + versions as JSON."),
) -> None:
    """Benchmark the built model on synthetic or dataset workloads (TTFT, ITL, throughput), optionally against HF."""
    options = {"isl": isl, "osl": osl, "num_requests": num_requests, "concurrency": concurrency,
               "isl_stdev": isl_stdev, "osl_stdev": osl_stdev, "seed": seed, "mode": mode,
               "dataset": str(dataset) if dataset else None, "baseline": list(baseline) if baseline else None,
               "output": str(output) if output else None}
    explicit = {k: v for k, v in options.items() if v is not None}
    cfg = resolve_config(ctx, config, yaml_extra, model, print_config, {"benchmark": explicit} if explicit else None)
    from autodeploy_cli.bench.command import run_bench
    from autodeploy_cli.commands.ranks import on_ranks

    on_ranks(cfg, lambda: run_bench(cfg))


from autodeploy_cli.commands.models import register as _register_models  # noqa: E402  (no torch import)

_register_models(app, user_errors)


def main() -> None:
    if os.environ.get("AUTO_DEPLOY_LOG_LEVEL", "").upper() == "DEBUG":
        app.pretty_exceptions_enable = True
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
