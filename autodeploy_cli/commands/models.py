"""`ad models`: list the model registry, show one entry's resolved config, and run the conformance sweep.

Imports neither torch nor transformers at module level: `ad --help` and `ad models` stay fast.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from autodeploy_cli.errors import ADError, did_you_mean

COLUMNS = ("id", "family", "params", "world size", "layers", "config layers", "status")


def _fmt_params(n: Optional[int]) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:.2f}B" if n >= 10**9 else f"{n / 1e6:.0f}M"


def entry_row(name: str, entry: dict) -> tuple[str, ...]:
    from model_registry import entry_params, num_layers

    layers = num_layers(name)
    return (
        name,
        entry.get("family", "?"),
        _fmt_params(entry_params(name)),
        str(entry.get("world_size", 1)),
        "-" if layers is None else str(layers),
        ",".join(Path(f).stem for f in entry.get("yaml_extra", [])),
        "unsupported" if entry.get("unsupported") else "ok",
    )


def select(family: Optional[str] = None, search: Optional[str] = None) -> list[str]:
    """Registry names filtered by family (exact, case-insensitive) and a substring of the id or architecture."""
    from model_registry import families, load_registry

    reg = load_registry()
    names = list(reg)
    if family:
        fams = families()
        if family.lower() not in (f.lower() for f in fams):
            raise ADError(
                f"No model family `{family}` in the registry.{did_you_mean(family, fams)} Families: "
                f"{', '.join(fams)}."
            )
        names = [n for n in names if reg[n].get("family", "").lower() == family.lower()]
    if search:
        s = search.lower()
        names = [n for n in names if s in n.lower() or s in str(reg[n].get("arch", "")).lower()]
        if not names:
            raise ADError(
                f"No registry entry matches `--search {search}`{f' in family {family}' if family else ''}."
                f"{_suggest(search)} `ad models` lists all entries."
            )
    return names


def _suggest(word: str, n: int = 3) -> str:
    from model_registry import load_registry

    names = list(load_registry())
    lowered = {name.lower(): name for name in names}
    w = word.lower()
    found = [name for name in names if w in name.lower()][:n]
    close = difflib.get_close_matches(w, list(lowered), n=n, cutoff=0.4)
    close += difflib.get_close_matches(w, [k.split("/")[-1] for k in lowered], n=n, cutoff=0.4)
    for c in close:
        full = lowered.get(c) or next((v for k, v in lowered.items() if k.split("/")[-1] == c), None)
        if full and full not in found:
            found.append(full)
    found = found[:n]
    return f" Closest entries: {', '.join(f'`{f}`' for f in found)}." if found else ""


def print_table(names: list[str]) -> None:
    from model_registry import load_registry

    reg = load_registry()
    rows = [entry_row(n, reg[n]) for n in names]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"model registry: {len(rows)} entries")
        for col in COLUMNS:
            table.add_column(col, no_wrap=col == "id", justify="right" if col in ("params", "world size", "layers")
                             else "left")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]  # one line per entry
    for row in [COLUMNS, *rows]:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def show(name: str) -> None:
    import yaml

    from model_registry import entry_params, get_entry, hf_architecture, load_architectures

    entry = get_entry(name)
    if entry is None:
        raise ADError(f"`{name}` is not in the model registry.{_suggest(name)} `ad models --search <word>` lists "
                      "entries by substring.")
    from autodeploy_cli.config.loader import resolve, to_yaml

    arch = entry.get("arch")
    typer.echo(f"{name}")
    typer.echo(f"  family: {entry.get('family', '?')}")
    if arch:
        typer.echo(f"  architecture: {arch} (model_registry/architectures/{load_architectures()[arch][0]})")
        typer.echo(f"  params: {_fmt_params(entry_params(name))} ({entry_params(name):,})")
    typer.echo(f"  recommended world size: {entry.get('world_size', 1)}")
    typer.echo(f"  config layers: {', '.join(entry.get('yaml_extra', [])) or '-'}")
    if entry.get("unsupported"):
        typer.echo(f"  unsupported: {entry['unsupported']}")
    if entry.get("description"):
        typer.echo(f"  description: {entry['description']}")
    values = hf_architecture(name)
    if values is not None:
        typer.echo("\n# HF architecture (stored config.json values; the build uses them when the model is not in the "
                   "HF cache)")
        typer.echo(yaml.safe_dump(values, sort_keys=False, width=120), nl=False)
    typer.echo("\n# resolved config: default.yaml < registry layers")
    typer.echo(to_yaml(resolve(model=name)), nl=False)


def check(names: list[str], report: Optional[Path], one_per_family: bool, command: str = "ad models --check",
          jobs: int = 1) -> None:
    from model_registry import load_registry

    if jobs < 1:
        raise ADError(f"`--jobs` must be 1 or more (entries checked at once, one process each), got {jobs}.")
    if one_per_family:
        reg = load_registry()
        firsts: dict[str, str] = {}
        for n in names:
            if not reg[n].get("unsupported") and not reg[n].get("local_dir"):
                firsts.setdefault(reg[n].get("family", "?"), n)
        names = list(firsts.values())
    from autodeploy_cli.commands.conformance import run_check, summary, write_markdown

    typer.echo(f"conformance sweep: {len(names)} entries, shrunk, CPU float32, `ad build --verify`")
    results = run_check(names, echo=typer.echo, jobs=jobs)
    s = summary(results)
    typer.echo(f"{len(results)} entries: {s['pass']} pass, {s['fail']} fail, {s['unsupported']} unsupported")
    if report:
        write_markdown(results, report, command)
        typer.echo(f"report written to {report}")
    if s["fail"]:
        raise typer.Exit(1)


def register(app: typer.Typer, user_errors: Callable) -> None:
    """Add `ad models` (list / --check) and `ad models show <id>` to the CLI."""
    models_app = typer.Typer(help="The model registry: list entries, show one, run the conformance sweep.",
                             add_completion=False)

    @models_app.callback(invoke_without_command=True)
    @user_errors
    def models(
        ctx: typer.Context,
        family: Optional[str] = typer.Option(None, "--family", "-f", help="Only this family (e.g. llama, qwen3_moe)."),
        search: Optional[str] = typer.Option(None, "--search", "-s", help="Only ids containing this text."),
        check_: bool = typer.Option(False, "--check", help="Build every selected entry shrunk (2 layers, small "
                                    "widths, same structure) with --verify on CPU and report pass/fail."),
        one_per_family: bool = typer.Option(False, "--one-per-family", help="With --check: only the first entry of "
                                            "each family."),
        report: Optional[Path] = typer.Option(None, "--report", help="With --check: write the results as Markdown "
                                              "(e.g. model_registry/CONFORMANCE.md)."),
        jobs: int = typer.Option(1, "--jobs", "-j", help="With --check: entries checked at once, one process each."),
    ) -> Any:
        """List registry entries (one line each when piped): id, family, params, world size, layers."""
        if ctx.invoked_subcommand is not None:
            return
        names = select(family, search)
        if check_:
            command = "ad models --check" + (f" --family {family}" if family else "") + (
                f" --search {search}" if search else "") + (" --one-per-family" if one_per_family else "") + (
                f" --report {report}" if report else "")
            check(names, report, one_per_family, command, jobs)
        else:
            print_table(names)

    @models_app.command("show")
    @user_errors
    def show_cmd(model_id: str = typer.Argument(..., help="A registry id, e.g. meta-llama/Llama-3.1-8B-Instruct.")):
        """Print one entry: family, architecture values, config layers and the resolved config."""
        show(model_id)

    app.add_typer(models_app, name="models")
