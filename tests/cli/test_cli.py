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
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith(f" {name} "))
        assert line.count("yes") >= 4  # all four patterns
        assert az.get_spec(name).paper.title in line  # wide enough: the whole title


def test_list_reads_in_an_80_column_terminal() -> None:
    """Every row keeps its full name, marks and year on one line that fits; the paper title is
    cut or left out instead (it was the names and marks that were cut to 'dav…' before)."""
    for columns, paper in ((80, False), (100, True)):
        r = runner.invoke(app, ["list"], env={"COLUMNS": str(columns)})
        assert r.exit_code == 0
        lines = r.stdout.splitlines()
        assert max(map(len, lines)) <= columns
        for spec in az.list_mixers():
            line = next(ln for ln in lines if ln.startswith(f" {spec.name} "))
            marks = ["yes" if p in spec.patterns else "-" for p in az.PATTERNS]
            # one role among the built-ins: the table says it in its caption, not per row
            assert line.split()[2] == spec.layout
            assert f"mechanisms ({len(az.list_mixers())}, role mixer)" in r.stdout
            assert line.split()[3:7] == marks and str(spec.paper.year) in line
        header = next(ln for ln in lines if ln.startswith(" name "))
        assert header.split()[-1] == ("paper" if paper else "year")
        assert ("paper: attnzoo info NAME" in r.stdout) is not paper


def test_list_filters() -> None:
    r = runner.invoke(app, ["list", "--family", "dense"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "sigmoid" in r.stdout and " softmax " not in r.stdout
    r = runner.invoke(app, ["list", "--layout", "grid2d"], env={"COLUMNS": "200"})
    names = {s.name for s in az.list_mixers(layout="grid2d")}
    assert r.exit_code == 0 and all(f" {n} " in r.stdout for n in names)
    assert not any(line.startswith(" softmax ") for line in r.stdout.splitlines())
    r = runner.invoke(app, ["list", "--dims", "2"], env={"COLUMNS": "200"})  # the first version's
    assert r.exit_code == 0 and all(f" {n} " in r.stdout for n in names)
    r = runner.invoke(app, ["list", "--layout", "grid4d"])
    assert r.exit_code != 0 and "--layout must be one of tokens, grid2d, grid3d" in r.output


def test_list_markdown_is_the_feature_table() -> None:
    from attnzoo.readme_table import feature_table

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
