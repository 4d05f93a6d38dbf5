"""``attnzoo recommend`` through typer's runner: the ranking with its evidence, the warnings and
the suggested command, in each format, and clear errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from typer.testing import CliRunner

from attnzoo.cli import app
from attnzoo.store import Store
from tests.test_recommend import add_run, speed

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


def _store(tmp_path: Path) -> Path:
    path = tmp_path / "s.duckdb"
    store = Store(path)
    add_run(store, [
        speed("alpha", 8192, 0.004, peak=3 << 30),
        speed("beta", 8192, 0.002, spread=0.6),
        speed("gamma", 8192, 0.003, peak=256 << 20),
    ])  # fmt: skip
    return path


def invoke(path: Path, *args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, ["recommend", "--db", str(path), *args], env=WIDE)
    return r.exit_code, r.stdout, r.stderr


def test_table_shows_ranks_evidence_exclusions_and_the_command(tmp_path: Path) -> None:
    path = _store(tmp_path)
    code, stdout, _ = invoke(path, "--seq-len", "8192", "--pattern", "causal-self", "--memory", "1GiB")  # fmt: skip
    assert code == 0, stdout
    # not a terminal: the table comes as CSV (cli_tables.Grid), the evidence after it
    table = stdout.split("evidence:")[0].splitlines()
    assert table[0] == "# recommend for T=8192 causal-self fwd (tokens), peak <= 1 GiB"
    rows = list(csv.DictReader(table[1:]))
    assert [(r["#"], r["mixer"], r["impl"]) for r in rows] == [("1", "gamma", "fast"), ("2", "beta", "fast")]  # fmt: skip
    gamma = rows[0]  # trusted, so before the faster but noisy beta
    assert (gamma["T used"], gamma["ms"], gamma["q1..q3 ms"], gamma["reps"]) == ("8192", "3", "2.93..3.07", "5")  # fmt: skip
    assert (gamma["spread"], gamma["trust"], gamma["peak"], gamma["fits"]) == ("5%", "ok", "256 MiB", "yes")  # fmt: skip
    assert rows[1]["trust"] == "noisy" and rows[1]["spread"] == "60%"
    assert "  1. gamma/fast: peak 256 MiB at T=8192 <= budget 1 GiB" in stdout
    assert "excluded alpha: fast: peak 3 GiB at T=8192 > budget 1 GiB" in stdout
    assert "warning: 1 of 2 ranked mechanism(s) rest on noisy or few-repeat timings: beta" in stdout
    assert (f"to measure what is missing: attnzoo bench speed --mixers beta --seq-lens 8192 "
            f"--patterns causal-self --mode fwd --repeats 10 --db {path}") in stdout  # fmt: skip


def test_json_and_csv_carry_the_evidence(tmp_path: Path) -> None:
    path = _store(tmp_path)
    code, stdout, _ = invoke(path, "--seq-len", "6000", "--pattern", "causal-self", "--format", "json")  # fmt: skip
    assert code == 0
    doc = json.loads(stdout)
    assert doc["request"]["seq_len"] == 6000 and doc["request"]["mode"] == "fwd"
    assert [r["mixer"] for r in doc["ranked"]] == ["gamma", "alpha", "beta"]
    assert doc["ranked"][0]["seq_len"] == 8192 and doc["ranked"][0]["run_id"] == 1
    assert doc["excluded"] == [] and doc["suggestion"].startswith(
        "attnzoo bench speed --mixers beta "
    )
    code, stdout, stderr = invoke(path, "--seq-len", "8192", "--pattern", "causal-self", "--format", "csv")  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(stdout)))
    assert [r["mixer"] for r in rows] == ["gamma", "alpha", "beta"]
    assert rows[2]["trust"] == "noisy" and rows[0]["median_s"] == "0.003"
    assert "warning: 1 of 3 ranked" in stderr  # the CSV on stdout stays clean


def test_nothing_measured_is_said_plainly(tmp_path: Path) -> None:
    path = _store(tmp_path)
    code, stdout, _ = invoke(path, "--seq-len", "1024", "--pattern", "noncausal-self", "--train")
    assert code == 0
    assert "nothing to rank" in stdout
    assert "warning: the store has no noncausal-self fwdbwd (full mask) speed measurement" in stdout
    assert "attnzoo bench speed --seq-lens 1024 --patterns noncausal-self --mode fwdbwd" in stdout


def test_bad_options_fail_with_one_line_naming_the_option(tmp_path: Path) -> None:
    path = _store(tmp_path)
    cases = [
        (["--pattern", "causal"], "error: --pattern must be one of"),
        (["--pattern", "causal-self", "--seq-len", "0"], "error: --seq-len must be a positive"),
        (["--pattern", "causal-self", "--memory", "lots"], "error: --memory: expected a size"),
        (["--pattern", "causal-self", "--layout", "grid"], "error: --layout must be one of"),
        (["--pattern", "causal-self", "--task", "mqar"], "error: --task 'mqar' has no quality"),
        (["--pattern", "causal-self", "--run", "7"], "error: --run: no run 7 in"),
        (["--pattern", "causal-self", "--format", "xml"], "error: --format must be one of"),
    ]
    for args, message in cases:
        full = ["--seq-len", "1024", *args] if "--seq-len" not in args else args
        code, _, stderr = invoke(path, *full)
        assert code == 2 and message in stderr, (args, stderr)
    code, _, stderr = invoke(tmp_path / "missing.duckdb", "--seq-len", "1", "--pattern", "causal-self")  # fmt: skip
    assert code == 1 and "does not exist" in stderr  # a store that cannot be used: failure
