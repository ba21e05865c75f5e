"""What every `ad` command shares: the config options, the override epilog, resolving the config (with the
unknown-flag check and --print-config), one-paragraph user errors, the build progress line."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from autodeploy_cli.errors import ADError, did_you_mean, first_line

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
        except BrokenPipeError:  # `ad models | head`: the reader left; stop writing, quietly, like other CLI tools
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as e:  # an internal bug: one paragraph unless the user asked for the traceback
            if os.environ.get("AUTO_DEPLOY_LOG_LEVEL", "").upper() == "DEBUG":
                raise
            first = first_line(e, default="")
            typer.secho(
                f"ad: internal error: {type(e).__name__}: {first} This is a bug in ad, not in your input. Re-run "
                "with AUTO_DEPLOY_LOG_LEVEL=DEBUG for the full traceback and include it in a bug report.",
                fg=typer.colors.RED, err=True,
            )
            raise typer.Exit(1) from None

    return wrapper


def check_flags(ctx: typer.Context) -> None:
    """A `--name` that is neither an option of this command nor a config key is a mistyped option: say so."""
    from autodeploy_cli.config.loader import top_level_keys

    options = sorted(o for p in ctx.command.params for o in getattr(p, "opts", []) if o.startswith("--"))
    for item in ctx.args:
        if not item.startswith("--") or "=" in item:
            continue
        key = item[2:].replace("-", "_")
        if "." not in key and key not in top_level_keys():
            raise ADError(
                f"`ad {ctx.command.name}` has no option `{item}` and `{key}` is not a config key either."
                f"{did_you_mean(item, options)} Options of `ad {ctx.command.name}`: {', '.join(options)} (see "
                f"`ad {ctx.command.name} --help`); config keys go after the options as `key=value`."
            )


def resolve_config(ctx: typer.Context, config: Optional[List[Path]], yaml_extra: Optional[List[Path]],
                   model: Optional[str], print_config: bool, explicit: Optional[dict] = None):
    """`explicit`: a command's own options as nested config keys; they win over the overrides after the options."""
    from autodeploy_cli.config.layers import deep_merge, parse_overrides
    from autodeploy_cli.config.loader import resolve, to_yaml

    check_flags(ctx)
    overrides = deep_merge(parse_overrides(ctx.args), explicit) if explicit else list(ctx.args)
    cfg = resolve(list(config or []) + list(yaml_extra or []), overrides, model=model)
    if print_config:
        from autodeploy_cli.config.checks import check_config

        typer.echo(to_yaml(cfg), nl=False)
        check_config(cfg)  # after printing: the user sees the config the error is about
        check_transform_options(cfg)
        raise typer.Exit(0)
    return cfg


def check_transform_options(cfg) -> None:
    """Validate `transforms` against the transform registry when it can be imported (it needs torch; without torch
    `--print-config` checks the rest)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return
    from autodeploy_cli.pipeline.registry import validate_transform_entries

    validate_transform_entries(cfg.transforms)


def build_progress():
    from autodeploy_cli.log import build_progress as progress

    return progress()


def console():
    from rich.console import Console

    return Console()
