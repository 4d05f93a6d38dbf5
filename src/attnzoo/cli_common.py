"""What every ``attnzoo`` sub-command shares: consoles, the one-line error, the store option,
and the guard that turns a store failure anywhere in a command into one clear line."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from attnzoo.extras import MissingExtra
from attnzoo.store import DEFAULT_DB, ENV_DB, Store, StoreError, default_path
from attnzoo.text import suggest

out = Console()
err = Console(stderr=True)

DbOption = Annotated[
    Path | None, typer.Option("--db", help=f"DuckDB store (default: ${ENV_DB} or ./{DEFAULT_DB}).")
]
WaitOption = Annotated[
    float,
    typer.Option(
        "--wait",
        help="Seconds to wait for a store another process holds open for writing.",
        min=0,
    ),
]


EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = (
    "Exit codes: 0 ok; 1 failure (a store that cannot be used, a missing extra, a failed check "
    "or measurement); 2 usage (a bad option or value, said before anything runs); 130 "
    "interrupted (Ctrl-C or SIGTERM; what was measured before is kept)."
)


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print ``error: message`` on stderr (never wrapped; ``message`` is text, not markup: an
    extra's ``[bench]`` stays) and return the exit to raise: usage (2) unless ``code`` says."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=code)


def check_choice(arg: str, value: str | int | None, allowed: tuple) -> None:
    if value is not None and value not in allowed:
        raise fail(
            f"{arg} must be one of {', '.join(map(str, allowed))}, got {value!r}{suggest(str(value), map(str, allowed))}"
        )


def open_store(db: Path | None, read_only: bool = False, wait: float = 10.0) -> Store:
    try:
        return Store(default_path(db), read_only=read_only, wait=wait)
    except StoreError as e:
        raise fail(str(e), EXIT_FAILURE) from None


def clear_store_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A command whose store fails at any point (damaged, busy, foreign), or that reaches an
    optional part whose extra is not installed, exits with one line (exit code 1)."""

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (StoreError, MissingExtra) as e:
            raise fail(str(e), EXIT_FAILURE) from None

    return guarded


def guard_commands(*apps: typer.Typer) -> None:
    """Wrap every command of ``apps`` in :func:`clear_store_errors`."""
    for a in apps:
        for command in a.registered_commands:
            if command.callback is not None:
                command.callback = clear_store_errors(command.callback)
