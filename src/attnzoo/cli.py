"""The ``attnzoo`` command line: thin parsing over the public API."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

import attnzoo as az
from attnzoo.bench.check import check_mixer, impl_choices
from attnzoo.config import suggest

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="attnzoo: attention and token-mixing mechanisms behind one interface.",
)
out = Console()
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        out.print(f"attnzoo {az.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """attnzoo: attention and token-mixing mechanisms behind one interface."""


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def _check_choice(arg: str, value: str | int | None, allowed: tuple) -> None:
    if value is not None and value not in allowed:
        raise _fail(
            f"{arg} must be one of {', '.join(map(str, allowed))}, got {value!r}{suggest(str(value), map(str, allowed))}"
        )


@app.command("list")
def list_cmd(
    dims: Annotated[int | None, typer.Option(help="1 (sequences) or 2 (images).")] = None,
    pattern: Annotated[str | None, typer.Option(help="One of the four CAB patterns.")] = None,
    family: Annotated[str | None, typer.Option(help="Mechanism family.")] = None,
    state: Annotated[str | None, typer.Option(help="none, constant or growing.")] = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the README feature table.")
    ] = False,
) -> None:
    """List registered mechanisms with family, dims, patterns, state and paper year."""
    _check_choice("--dims", dims, (1, 2))
    _check_choice("--pattern", pattern, az.PATTERNS)
    _check_choice("--family", family, az.FAMILIES)
    _check_choice("--state", state, az.STATES)
    if markdown:
        from attnzoo.docs import feature_table

        print(feature_table())
        return
    specs = az.list_mixers(dims=dims, pattern=pattern, family=family, state=state)
    table = Table(title=f"attnzoo mechanisms ({len(specs)})", caption="patterns: yes = supported")
    for col in ("name", "family", "dims"):
        table.add_column(col)
    for p in az.PATTERNS:
        table.add_column(p.replace("-", "\n"), justify="center")
    for col in ("state", "exact", "year", "paper"):
        table.add_column(col)
    for s in specs:
        marks = ["yes" if p in s.patterns else "-" for p in az.PATTERNS]
        table.add_row(
            s.name,
            s.family,
            str(s.dims),
            *marks,
            s.state,
            "yes" if s.exact else "no",
            str(s.paper.year),
            s.paper.title,
        )
    out.print(table)


@app.command()
def info(name: Annotated[str, typer.Argument(help="Registered mechanism name.")]) -> None:
    """Show one mechanism's spec: paper, complexity, patterns, masks, config keys."""
    try:
        spec = az.get_spec(name)
    except ValueError as e:
        raise _fail(str(e)) from None
    table = Table(show_header=False, title=spec.name)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = {
        "family": spec.family,
        "dims": str(spec.dims),
        "patterns": ", ".join(spec.patterns),
        "masks": ", ".join(spec.masks),
        "state": spec.state,
        "exact softmax": "yes" if spec.exact else "no",
        "complexity": spec.complexity,
        "paper": f"{spec.paper.title} ({spec.paper.year})",
        "url": spec.paper.url,
        "code": spec.paper.code or "-",
        "verified against": spec.peer,
        "impls": ", ".join(impl_choices(spec)) or "-",
        "config keys": ", ".join(spec.config.field_names()),
    }
    for k, v in rows.items():
        table.add_row(k, v)
    out.print(table)


@app.command()
def selfcheck(
    length: Annotated[int, typer.Option(help="Sequence length of the check.")] = 37,
    d_model: Annotated[int, typer.Option(help="Model width of the check.")] = 32,
) -> None:
    """Check every fast path of every mechanism against its reference (forward + backward)."""
    if length < 1 or d_model < 1:
        raise _fail(f"--length and --d-model must be >= 1, got {length} and {d_model}")
    specs = az.list_mixers()
    results = []
    start = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("selfcheck", total=len(specs))
        for spec in specs:
            bar.update(task, description=f"selfcheck {spec.name}")
            results += check_mixer(spec, d_model=d_model, length=length)
            bar.advance(task)
    table = Table(title=f"fast path vs reference, fwd+bwd, fp32, T={length}")
    for col in ("mixer", "impl", "pattern", "max |err|", "result"):
        table.add_column(col)
    for r in results:
        verdict = "[green]ok[/]" if r.ok else f"[red]FAIL[/] {r.detail}"
        table.add_row(r.mixer, r.impl, r.pattern, f"{r.max_abs_err:.1e}", verdict)
    out.print(table)
    failed = [r for r in results if not r.ok]
    out.print(
        f"selfcheck: {len(results) - len(failed)} ok, {len(failed)} failing ({time.perf_counter() - start:.1f} s)"
    )
    if failed:
        raise typer.Exit(code=1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
