"""`attnzoo bench speed`, `results` and `report` from the command line: bad flags and outputs."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnzoo.cli import app, parse_size

runner = CliRunner()


@pytest.mark.parametrize(
    "args,match",
    [
        (["--seq-lens", "abc"], "--seq-lens: expected comma-separated positive integers"),
        (["--seq-lens", "256,-1"], "--seq-lens: expected comma-separated positive integers"),
        (["--mixers", "softmx"], "--mixers: unknown mixer 'softmx' (did you mean 'softmax'?)"),
        (["--patterns", "sideways"], "--patterns: expected one of noncausal-self"),
        (["--mode", "backward"], "--mode: expected fwd, fwdbwd or step"),
        (
            ["--suite", "quik"],
            "--suite must be one of quick, linear, full, got 'quik' (did you mean 'quick'?)",
        ),
        (["--memory-budget", "lots"], "--memory-budget: expected a size such as 4GiB"),
        (["--masks", "diagonal"], "--masks: expected mask kinds"),
    ],
)
def test_bad_flags_are_clear(args: list[str], match: str, tmp_path: Path) -> None:
    db = tmp_path / "x.duckdb"
    r = runner.invoke(app, ["bench", "speed", "--db", str(db), *args])
    assert r.exit_code == 2, r.stdout
    assert match in " ".join(r.stderr.split())
    assert not db.exists(), "a rejected command must not create the store"


def test_unsupported_pattern_for_a_named_mixer(tmp_path: Path) -> None:
    from tests.bench.fakes import fake_mixer

    with fake_mixer("_cli_self_only") as name:
        r = runner.invoke(
            app,
            [
                "bench",
                "speed",
                "--db",
                str(tmp_path / "x.duckdb"),
                "--mixers",
                name,
                "--patterns",
                "causal-cross",
            ],
        )
    assert (
        r.exit_code == 2
        and "_cli_self_only does not support causal-cross; it supports noncausal-self" in r.stderr
    )


def test_bench_results_report_round_trip(tmp_path: Path) -> None:
    db = str(tmp_path / "cli.duckdb")
    r = runner.invoke(app, ["bench", "speed", "--db", db, "--mixers", "softmax", "--seq-lens", "32,64", "--patterns",
                            "causal-self", "--masks", "", "--repeats", "1", "--mode", "fwd", "--heads", "2", "--head-dim", "8",
                            "--no-progress", "--skip-impls", ""])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    assert "run 1: 6 measurements, 0 skipped, 0 failed" in r.stdout
    r = runner.invoke(app, ["results", "--db", db, "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 6 and {x["impl"] for x in rows} == {"reference", "sdpa", "blocked"}
    r = runner.invoke(app, ["results", "--db", db, "--format", "json", "--mixer", "softmax"])
    assert len(json.loads(r.stdout)) == 6
    r = runner.invoke(app, ["results", "--db", db], env={"COLUMNS": "200", "TTY_COMPATIBLE": "1"})
    assert r.exit_code == 0 and "run 1: 6 measurements" in r.stdout
    narrow = runner.invoke(
        app, ["results", "--db", db], env={"COLUMNS": "80", "TTY_COMPATIBLE": "1"}
    ).stdout
    assert max(map(len, narrow.splitlines())) <= 80
    for x in rows:  # an 80-column terminal shows every name and number whole (none cut to '1…')
        ms = f"{float(x['median_s']) * 1e3:.3f}"
        line = next(ln for ln in narrow.splitlines() if f" {ms} " in ln)
        assert line.split()[:2] == [x["mixer"], x["impl"]] and f" {x['seq_len']} " in line
    out = tmp_path / "rep"
    r = runner.invoke(app, ["report", "--db", db, "--out", str(out)])
    assert r.exit_code == 0 and (out / "index.html").exists()
    r = runner.invoke(app, ["report", "--db", db, "--run", "7"])
    assert r.exit_code == 2 and "--run 7: no such run" in r.stderr
    r = runner.invoke(app, ["results", "--db", db, "--format", "xml"])
    assert r.exit_code == 2 and "--format must be one of table, csv, json" in r.stderr


def test_image_sizes_set_the_grid_of_2d_mixers(tmp_path: Path) -> None:
    db = str(tmp_path / "img.duckdb")
    r = runner.invoke(app, ["bench", "speed", "--db", db, "--mixers", "lka,softmax", "--seq-lens", "16",
                            "--image-sizes", "8,12", "--patterns", "noncausal-self", "--masks", "",
                            "--repeats", "1", "--mode", "fwd", "--heads", "2", "--head-dim", "8",
                            "--no-progress", "--skip-impls", "reference,blocked"])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(app, ["results", "--db", db, "--format", "json"])
    lengths = {(x["mixer"], x["seq_len"]) for x in json.loads(r.stdout)}
    assert lengths == {("lka", 64), ("lka", 144), ("softmax", 16)}  # 1-D mixers keep --seq-lens
    bad = runner.invoke(app, ["bench", "speed", "--db", db, "--image-sizes", "0"])
    assert bad.exit_code == 2 and "--image-sizes: expected comma-separated positive" in bad.stderr


def test_report_and_results_on_missing_or_foreign_store(tmp_path: Path) -> None:
    r = runner.invoke(app, ["report", "--db", str(tmp_path / "none.duckdb")])
    assert r.exit_code == 1 and "does not exist" in r.stderr
    bad = tmp_path / "bad.duckdb"
    bad.write_text("not a database")
    r = runner.invoke(app, ["results", "--db", str(bad)])
    assert r.exit_code == 1 and "not a valid DuckDB database" in r.stderr


def test_env_var_selects_the_store(tmp_path: Path) -> None:
    db = tmp_path / "env.duckdb"
    r = runner.invoke(app, ["report"], env={"ATTNZOO_DB": str(db)})
    assert r.exit_code == 1 and str(db) in " ".join(r.stderr.split())


def test_parse_size() -> None:
    assert parse_size("--memory-budget", "4GiB") == 4 << 30
    assert parse_size("--memory-budget", "512MiB") == 512 << 20
    assert parse_size("--memory-budget", "1000") == 1000
    assert parse_size("--memory-budget", "2G") == 2 << 30
