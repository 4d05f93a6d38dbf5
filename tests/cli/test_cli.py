"""The attnzoo CLI, driven through typer's runner (same code path as the console script)."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

import attnzoo as az
from attnzoo.cli import app

runner = CliRunner()


def test_version() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"attnzoo {az.__version__}"


def test_list_shows_builtins_with_patterns() -> None:
    r = runner.invoke(app, ["list"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for name in ("softmax", "sigmoid"):
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith(f"│ {name} "))
        assert line.count("yes") >= 4  # all four patterns


def test_list_filters() -> None:
    r = runner.invoke(app, ["list", "--family", "dense"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "sigmoid" in r.stdout and " softmax " not in r.stdout


def test_list_markdown_is_the_feature_table() -> None:
    from attnzoo.docs import feature_table

    r = runner.invoke(app, ["list", "--markdown"])
    assert r.exit_code == 0 and r.stdout.strip() == feature_table()


def test_info() -> None:
    r = runner.invoke(app, ["info", "sigmoid"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    assert "2409.04431" in r.stdout and "block-causal" in r.stdout and "context_len" in r.stdout


def test_unknown_names_suggest_close_matches() -> None:
    r = runner.invoke(app, ["info", "softmx"])
    assert r.exit_code == 2 and "did you mean 'softmax'" in r.stderr
    r = runner.invoke(app, ["list", "--pattern", "causal"])
    assert r.exit_code == 2 and "--pattern must be one of" in r.stderr


def test_selfcheck_passes() -> None:
    r = runner.invoke(app, ["selfcheck", "--length", "19"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.stdout
    assert "0 failing" in r.stdout


def test_console_script_entry_point() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "attnzoo.cli", "--version"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "attnzoo" in r.stdout
