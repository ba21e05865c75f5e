"""`ad serve`'s command line (the server itself lives in autodeploy_cli/serve/); trtllm-serve's flags map here."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from autodeploy_cli.cli_common import (
    EXTRA, OVERRIDES_HELP, ConfigOpt, ModelOpt, PrintConfigOpt, YamlExtraOpt, resolve_config, user_errors,
)
from autodeploy_cli.errors import ADError


def register(app: typer.Typer) -> None:
    app.command("serve", context_settings=EXTRA, epilog=OVERRIDES_HELP)(user_errors(serve))


def serve(
    ctx: typer.Context,
    model_arg: Optional[str] = typer.Argument(None, metavar="[MODEL]", help="Model to serve (same as --model)."),
    config: Optional[List[Path]] = ConfigOpt,
    yaml_extra: Optional[List[Path]] = YamlExtraOpt,
    model: Optional[str] = ModelOpt,
    print_config: bool = PrintConfigOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    max_queue: int = typer.Option(4096, "--max-queue", help="Requests waiting to be scheduled before new ones get "
                                  "429 with Retry-After."),
    grace_period: float = typer.Option(30.0, "--grace-period", help="Seconds in-flight requests get to finish "
                                       "after SIGTERM / Ctrl-C."),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name", help="Name(s) clients use, "
                                                    "comma-separated (default: the model)."),
    extra_llm_api_options: Optional[List[Path]] = typer.Option(None, "--extra_llm_api_options", help="Alias of "
                                                               "--config (trtllm-serve's name)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Accepted for trtllm-serve compatibility "
                                          "(`_autodeploy`); ad always serves its own runtime."),
    trust_remote_code: bool = typer.Option(False, "--trust_remote_code", "--trust-remote-code",
                                           help="Sets trust_remote_code=true."),
    tp_size: Optional[int] = typer.Option(None, "--tp_size", "--tp-size", help="Sets world_size (trtllm-serve's "
                                          "name)."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every HTTP request."),
) -> None:
    """Serve the built model over an OpenAI-compatible HTTP API (completions, chat, streaming, metrics)."""
    if model_arg and "=" in model_arg and not Path(model_arg).exists():
        ctx.args.insert(0, model_arg)  # `ad serve key=value`: an override, not a model
        model_arg = None
    if model_arg and model and model_arg != model:
        raise ADError(f"Two models given: `{model_arg}` and --model `{model}`. Pass one of them.")
    explicit: dict = {}
    if trust_remote_code:
        explicit["trust_remote_code"] = True
    if tp_size is not None:
        explicit["world_size"] = tp_size
    files = list(config or []) + list(extra_llm_api_options or [])
    cfg = resolve_config(ctx, files, yaml_extra, model_arg or model, print_config, explicit or None)
    if backend not in (None, "_autodeploy", "autodeploy"):
        typer.secho(f"ad serve: --backend {backend} ignored: ad serves its own runtime.", err=True)
    from autodeploy_cli.serve.server import ServeOptions, parse_served_names, run_server

    from autodeploy_cli.commands.ranks import on_ranks

    opts = ServeOptions(host=host, port=port, max_queue=max_queue, grace_period_s=grace_period,
                        served_model_names=parse_served_names(served_model_name), access_log=access_log)
    on_ranks(cfg, lambda: run_server(cfg, opts))  # rank 0 serves; the other ranks follow its steps


