"""The ``attnzoo`` command's entry point: checks the ``[bench]`` extra before importing the CLI.

``pip install attnzoo`` alone brings the library, not the command line; without typer, rich,
duckdb and matplotlib the command says which extra to install (exit code 1) instead of failing
with a traceback. Exit codes: 0 ok, 1 failure, 2 usage (a bad option or value), 130
interrupted (Ctrl-C or SIGTERM; what was measured is kept).
"""

from __future__ import annotations

import sys

from attnzoo.extras import MissingExtra, require


def main() -> None:
    try:
        require("bench", "the attnzoo command line")
    except MissingExtra as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    from attnzoo.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
