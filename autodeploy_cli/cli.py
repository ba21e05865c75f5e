"""The `ad` command line. Thin: parse -> resolve config -> call one function per command.

Heavy imports (torch, transformers) happen inside commands so `ad --help` stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from autodeploy_cli.cli_common import (
    EXTRA, OVERRIDES_HELP, ConfigOpt, ModelOpt, PrintConfigOpt, YamlExtraOpt, build_progress, console, resolve_config,
    user_errors,
)
from autodeploy_cli.errors import ADError

app = typer.Typer(
    name="ad",
    help="Deploy a Hugging Face causal LM for fast inference, automatically: build, run, bench, dump-graphs.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)

@app.command(context_settings=EXTRA, epilog=OVERRIDES_HELP)
@user_errors
def build(
    ctx: typer.Context,
    config: Optional[List[Path]] = ConfigOpt,
    yaml_extra: Optional[List[Path]] = YamlExtraOpt,
    model: Optional[str] = ModelOpt,
    print_config: bool = PrintConfigOpt,
    verify: bool = typer.Option(False, "--verify", help="Check the graph against the HF model after every transform "
                                "that changed it: logits of a prefill probe, and once the KV cache is in, a generation "
                                "check (prompts across pages, prefills mixed with decodes, chunked prefill when "
                                "enabled, single-sequence decode, through CUDA graphs after compile): every step's "
                                "logits and greedy tokens vs HF (its forward over the whole context at each step)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write the build report as JSON to this file."),
    plan: bool = typer.Option(False, "--plan", help="Print a memory plan (weights, KV bytes per token, max concurrent "
                              "sequences, recommended world size) from the config alone, then exit; loads no weights."),
    gpu_mem: Optional[str] = typer.Option(None, "--gpu-mem", help="GPU memory for --plan, e.g. 141GB or 80GiB "
                                          "(default: the detected GPU)."),
) -> None:
    """Build the optimised model and print the build report (transforms, matches, timings, coverage)."""
    cfg = resolve_config(ctx, config, yaml_extra, model, print_config)
    if report:
        from autodeploy_cli.config.checks import output_path

        report = output_path(report, "--report")  # checked before the build, not after it
    if plan:
        from autodeploy_cli.commands.plan import print_plan

        print_plan(cfg, gpu_mem)
        return
    from autodeploy_cli.commands.ranks import on_ranks

    on_ranks(cfg, lambda: _build_and_report(cfg, verify, report))


def _build_and_report(cfg, verify: bool, report: Optional[Path]) -> None:
    from autodeploy_cli.pipeline.build import build as run_build
    from autodeploy_cli.pipeline.report import print_report, write_json

    with build_progress():
        result = run_build(cfg, verify=verify)
    print_report(result.report, console())
    if report:
        write_json(result.report, report)
        typer.echo(f"report written to {report}")
    if result.verify_failure:
        raise ADError(
            f"Verification failed: `{result.verify_failure}` is the first transform whose logits or generated tokens "
            "differ from the HF model beyond tolerance (see the table and its verify column). Disable it with "
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
        with build_progress():
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
    dataset: Optional[Path] = typer.Option(None, "--dataset", help='JSONL of {"prompt": ..., "max_tokens": ...} lines, or trtllm-bench prepare-dataset lines.'),
    baseline: Optional[List[str]] = typer.Option(None, "--baseline", help="Also run a baseline: hf | hf-compile (repeatable)."),
    baseline_concurrency: Optional[int] = typer.Option(None, "--baseline-concurrency", help="Sequences per HF generate call (default --concurrency), for models whose HF path cannot hold that many."),
    mode: Optional[str] = typer.Option(None, "--mode", help="throughput (up to --concurrency in flight) | latency (one at a time)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write every metric + config + versions as JSON "
                                          "(an existing file is kept: the next free name FILE.1.json is used)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --output file."),
    url: Optional[str] = typer.Option(None, "--url", help="Benchmark a running OpenAI-compatible server at this base "
                                      "URL (streamed /v1/completions) instead of building the model here."),
) -> None:
    """Benchmark the built model on synthetic or dataset workloads (TTFT, ITL, throughput), optionally against HF."""
    options = {"isl": isl, "osl": osl, "num_requests": num_requests, "concurrency": concurrency, "url": url,
               "isl_stdev": isl_stdev, "osl_stdev": osl_stdev, "seed": seed, "mode": mode,
               "dataset": str(dataset) if dataset else None, "baseline": list(baseline) if baseline else None,
               "baseline_concurrency": baseline_concurrency,
               "output": str(output) if output else None}
    explicit = {k: v for k, v in options.items() if v is not None}
    cfg = resolve_config(ctx, config, yaml_extra, model, print_config, {"benchmark": explicit} if explicit else None)
    from autodeploy_cli.bench.command import run_bench
    from autodeploy_cli.commands.ranks import on_ranks

    on_ranks(cfg, lambda: run_bench(cfg, overwrite=force))


from autodeploy_cli.commands.models import register as _register_models  # noqa: E402  (no torch import)
from autodeploy_cli.commands.serve_command import register as _register_serve  # noqa: E402  (no torch import)

_register_serve(app)

_register_models(app, user_errors)


@app.callback(invoke_without_command=True)
def _global_options(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show every transform's log lines (INFO); also after "
                                 "the command."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Errors only: no progress display, no warnings."),
    version: bool = typer.Option(False, "--version", help="Print ad's version and exit."),
) -> None:
    """-v/-q are applied by main() (they work before or after the command); here they are documented."""
    if version:
        from importlib.metadata import PackageNotFoundError, version as dist_version

        try:
            typer.echo(f"ad {dist_version('autodeploy-cli')}")
        except PackageNotFoundError:  # running from a checkout that was not installed
            typer.echo("ad (not installed: run from a checkout)")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


def apply_global_flags(argv: list[str]) -> list[str]:
    """-v/--verbose and -q/--quiet anywhere on the line set the log level for this run; the rest is returned."""
    rest = []
    for arg in argv:
        if arg in ("-v", "--verbose"):
            os.environ["AUTO_DEPLOY_LOG_LEVEL"] = "INFO"
        elif arg in ("-q", "--quiet"):
            os.environ["AUTO_DEPLOY_LOG_LEVEL"] = "ERROR"
            os.environ["AD_QUIET"] = "1"
        else:
            rest.append(arg)
    return rest


def main() -> None:
    sys.argv[1:] = apply_global_flags(sys.argv[1:])
    try:
        from autodeploy_cli.log import log_level_from_env

        log_level_from_env()
    except ADError as e:
        typer.secho(f"ad: error: {e}", fg=typer.colors.RED, err=True)
        raise SystemExit(2) from None
    if os.environ.get("AUTO_DEPLOY_LOG_LEVEL", "").upper() == "DEBUG":
        app.pretty_exceptions_enable = True
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
