"""The attnzoo CLI, driven through typer's runner (same code path as the console script)."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import attnzoo as az
from attnzoo.cli import app

runner = CliRunner()


def terminal(columns: int) -> dict[str, str]:
    """The environment of a terminal ``columns`` wide (rich's TTY_COMPATIBLE): the runner's
    stdout is not a terminal, so without it the tables come out as CSV."""
    return {"COLUMNS": str(columns), "TTY_COMPATIBLE": "1"}


def csv_rows(text: str) -> list[list[str]]:
    """The rows of CSV output, ``# `` note lines left out."""
    return list(
        csv.reader(
            io.StringIO("".join(ln for ln in text.splitlines(True) if not ln.startswith("# ")))
        )
    )


def test_version() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == f"attnzoo {az.__version__}"


def test_list_shows_builtins_with_patterns() -> None:
    r = runner.invoke(app, ["list"], env=terminal(200))
    assert r.exit_code == 0
    for name in ("softmax", "sigmoid"):
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith(f" {name} "))
        assert line.count("yes") >= 4  # all four patterns
        assert az.get_spec(name).paper.title in line  # wide enough: the whole title


def test_list_reads_in_an_80_column_terminal() -> None:
    """Every row keeps its full name, marks and year on one line that fits; the paper title is
    cut or left out instead (it was the names and marks that were cut to 'dav…' before)."""
    for columns, paper in ((80, False), (100, True)):
        r = runner.invoke(app, ["list"], env=terminal(columns))
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
    r = runner.invoke(app, ["list", "--family", "dense"], env=terminal(200))
    assert r.exit_code == 0 and "sigmoid" in r.stdout and " softmax " not in r.stdout
    r = runner.invoke(app, ["list", "--layout", "grid2d"], env=terminal(200))
    names = {s.name for s in az.list_mixers(layout="grid2d")}
    assert r.exit_code == 0 and all(f" {n} " in r.stdout for n in names)
    assert not any(line.startswith(" softmax ") for line in r.stdout.splitlines())
    r = runner.invoke(app, ["list", "--dims", "2"], env=terminal(200))  # the first version's
    assert r.exit_code == 0 and all(f" {n} " in r.stdout for n in names)
    r = runner.invoke(app, ["list", "--layout", "grid4d"])
    assert r.exit_code != 0 and "--layout must be one of tokens, grid2d, grid3d" in r.output


def test_list_markdown_is_the_feature_table() -> None:
    from attnzoo.readme_table import feature_table

    r = runner.invoke(app, ["list", "--markdown"])
    assert r.exit_code == 0 and r.stdout.strip() == feature_table()


def test_info() -> None:
    r = runner.invoke(app, ["info", "sigmoid"], env=terminal(200))
    assert r.exit_code == 0
    assert "2409.04431" in r.stdout and "block-causal" in r.stdout and "context_len" in r.stdout


def test_info_lists_the_masks_each_pattern_takes() -> None:
    """lightning declares full and causal but only streams causal-self: full is not offered."""
    r = runner.invoke(app, ["info", "lightning"])
    assert r.exit_code == 0, r.output
    masks = {row[0]: row[1] for row in csv_rows(r.stdout) if row[0].startswith("masks")}
    assert masks == {"masks (causal-self)": "causal"}
    r = runner.invoke(app, ["info", "softmax"])
    masks = {row[0]: row[1] for row in csv_rows(r.stdout) if row[0].startswith("masks")}
    assert (
        masks["masks (noncausal-self)"]
        == "full, sliding-window, document, global, qk-sparse, hash-sparse"
    )
    assert masks["masks (causal-cross)"] == (
        "causal, sliding-window, document, prefix-lm, block-causal, global, shared-question, "
        "causal-blockwise, qk-sparse, hash-sparse"
    )


def test_info_describes_every_config_key() -> None:
    for name in ("lightning", "gla", "area"):
        r = runner.invoke(app, ["info", name])
        rows = csv_rows(r.stdout)
        start = rows.index(["key", "type", "default", "description"])
        keys = {row[0]: row[1:] for row in rows[start + 1 :]}
        assert list(keys) == az.get_spec(name).config.field_names()
        assert all(type_ and default and text for type_, default, text in keys.values()), keys
    assert keys["d_model"][:2] == ["int (>= 1)", "required"]


def test_piped_tables_are_csv_with_whole_words() -> None:
    """Not a terminal (the runner, a pipe): one CSV line per mechanism however narrow the
    terminal, every name and paper title whole (a piped table used to split words at 80)."""
    r = runner.invoke(app, ["list"], env={"COLUMNS": "40"})
    assert r.exit_code == 0
    assert r.stdout.startswith("# attnzoo mechanisms (")
    rows = csv_rows(r.stdout)
    assert rows[0][:3] == ["name", "family", "layout"] and rows[0][-1] == "paper"
    assert len(rows) == 1 + len(az.list_mixers())
    for spec, row in zip(az.list_mixers(), rows[1:], strict=True):
        assert row[0] == spec.name and row[-1] == spec.paper.title and len(row) == len(rows[0])


@pytest.fixture(scope="module")
def speed_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store with one speed run of one measurement (softmax, sdpa, T=16)."""
    db = str(tmp_path_factory.mktemp("speed") / "one.duckdb")
    r = runner.invoke(app, ["bench", "speed", "--db", db, "--mixers", "softmax", "--seq-lens", "16",
                            "--patterns", "causal-self", "--masks", "", "--repeats", "1", "--mode",
                            "fwd", "--heads", "2", "--head-dim", "8", "--no-progress",
                            "--skip-impls", "reference,blocked"])  # fmt: skip
    assert r.exit_code == 0, r.output
    return db


def test_piped_results_are_csv_with_whole_words(speed_db: str) -> None:
    r = runner.invoke(app, ["results", "--db", speed_db], env={"COLUMNS": "30"})
    assert r.exit_code == 0, r.output
    rows = csv_rows(r.stdout)
    assert rows[0] == ["mixer", "impl", "pattern", "mask", "mode", "T", "ms", "MiB", "GFLOP/s",
                       "of GEMM"]  # fmt: skip
    assert [row[:6] for row in rows[1:]] == [
        ["softmax", "sdpa", "causal-self", "causal", "fwd", "16"]
    ]
    r = runner.invoke(app, ["results", "--db", speed_db], env=terminal(120))  # a terminal: a table
    assert "causal-self" in r.stdout and "," not in r.stdout


def test_report_out_that_cannot_be_a_folder_is_one_line(tmp_path: Path, speed_db: str) -> None:
    """A file (checked before the store opens), or a path under a file (what writing hits)."""
    target = tmp_path / "taken.html"
    target.write_text("not a folder")
    r = runner.invoke(app, ["report", "--db", str(tmp_path / "none.duckdb"), "--out", str(target)])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.exception
    assert f"--out '{target}' is a file; the report is a folder" in " ".join(r.stderr.split())
    assert target.read_text() == "not a folder"
    r = runner.invoke(app, ["report", "--db", speed_db, "--out", str(target / "sub")])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.exception
    message = " ".join(r.stderr.split())
    assert message.startswith(f"error: --out '{target / 'sub'}': cannot write the report there: ")


def test_number_lists_name_the_flag_and_refuse_empty_items() -> None:
    for args, flag, value, expected in (
        (["bench", "quality", "--lrs", "abc"], "--lrs", "abc", "comma-separated numbers"),
        (["bench", "quality", "--lrs", "1e-3,,3e-3"], "--lrs", "1e-3,,3e-3", "(empty item 2)"),
        (["bench", "quality", "--lrs", "nan"], "--lrs", "nan", "(finite)"),
        (["bench", "quality", "--seeds", "0,x"], "--seeds", "0,x", "integers >= 0"),
        (["bench", "speed", "--seq-lens", "64,,128"], "--seq-lens", "64,,128", "(empty item 2)"),
        (["bench", "speed", "--seq-lens", "64,128,"], "--seq-lens", "64,128,", "(empty item 3)"),
        (["bench", "speed", "--image-sizes", ""], "--image-sizes", "", "(no value)"),
        (
            ["bench", "speed", "--mixers", "softmax,,linear"],
            "--mixers",
            "softmax,,linear",
            "(empty item 2)",
        ),
        (["bench", "cp", "--strategy", "ring,"], "--strategy", "ring,", "(empty item 2)"),
        (
            ["bench", "quality", "--set", "seq_len=64,,num_kv_pairs=4"],
            "--set",
            "seq_len=64,,num_kv_pairs=4",
            "(empty item 2)",
        ),
    ):
        r = runner.invoke(app, args)
        message = " ".join(r.stderr.split())
        assert r.exit_code == 2, (args, r.output)
        assert message.startswith(f"error: {flag}: expected ") and f"got {value!r}" in message, (
            message
        )
        assert expected in message, message


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
