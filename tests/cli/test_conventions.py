"""The command line's conventions, held stable: the ``--json`` summaries and ``results --format
json`` keys (``attnzoo.cli_summary``), the exit codes (0 ok, 1 failure, 2 usage, 130
interrupted) and shell completion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import attnzoo.cli as cli
from attnzoo.bench.runs import RunInterrupted
from attnzoo.cli import app
from attnzoo.cli_summary import RESULTS_KEYS, ROW_KEYS, SCHEMA, SKIP_KEYS, TOP_KEYS
from attnzoo.store import Store

SPEED = ["bench", "speed", "--mixers", "softmax", "--seq-lens", "16", "--patterns",
         "causal-self", "--masks", "causal", "--mode", "fwd", "--repeats", "1", "--warmup", "0",
         "--no-progress"]  # fmt: skip
QUALITY = ["bench", "quality", "--mixers", "linear", "--d-model", "16", "--steps", "2",
           "--lrs", "1e-3", "--no-progress"]  # fmt: skip


def summary_of(out: str) -> dict:
    data = json.loads(out)  # stdout is the JSON document and nothing else
    assert tuple(data) == TOP_KEYS
    assert data["schema"] == SCHEMA
    return data


def test_speed_json_summary_and_results_json(tmp_path: Path) -> None:
    db = str(tmp_path / "s.duckdb")
    r = CliRunner().invoke(app, [*SPEED, "--db", db, "--json"])
    assert r.exit_code == 0, r.output
    data = summary_of(r.stdout)
    assert (data["kind"], data["status"], data["db"]) == ("speed", "complete", str(Path(db)))
    assert data["counts"]["rows"] == len(data["rows"]) > 0
    assert all(tuple(row) == ROW_KEYS["speed"] for row in data["rows"])
    assert all(tuple(s) == SKIP_KEYS["speed"] for s in data["skipped"])
    assert {row["mixer"] for row in data["rows"]} == {"softmax"}
    res = CliRunner().invoke(app, ["results", "--db", db, "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert len(rows) == len(data["rows"]) and all(tuple(r) == RESULTS_KEYS for r in rows)
    assert [r["median_s"] for r in rows] == [r["median_s"] for r in data["rows"]]


def test_quality_json_summary(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, [*QUALITY, "--db", str(tmp_path / "q.duckdb"), "--json"])
    assert r.exit_code == 0, r.output
    data = summary_of(r.stdout)
    assert data["kind"] == "quality" and data["counts"]["rows"] == len(data["rows"]) == 1
    (row,) = data["rows"]
    assert tuple(row) == ROW_KEYS["quality"] and row["mixer"] == "linear"


def test_an_interrupted_bench_prints_its_summary_and_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(plan, store: Store, **kw) -> int:  # noqa: ANN001
        run_id = store.begin_run(kind="speed", suite="custom", command="attnzoo bench speed",
                                 config={}, env={})  # fmt: skip
        store.finish_run(run_id, "interrupted", "stopped by SIGTERM")
        raise RunInterrupted(run_id)

    monkeypatch.setattr(cli, "run_speed", interrupted)
    r = CliRunner().invoke(app, [*SPEED, "--db", str(tmp_path / "i.duckdb"), "--json"])
    assert r.exit_code == 130
    data = summary_of(r.stdout)
    assert (data["status"], data["note"]) == ("interrupted", "stopped by SIGTERM")
    assert "marked interrupted" in r.stderr


def test_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["list"]).exit_code == 0
    assert runner.invoke(app, ["list", "--pattern", "sideways"]).exit_code == 2  # usage
    assert runner.invoke(app, ["bench", "speed", "--repeats", "zero"]).exit_code == 2
    bad = tmp_path / "bad.duckdb"
    bad.write_text("not a database")
    r = runner.invoke(app, ["results", "--db", str(bad)])  # failure, not usage
    assert r.exit_code == 1 and "not a valid DuckDB database" in r.stderr
    assert "Exit codes: 0 ok; 1 failure" in runner.invoke(app, ["--help"]).stdout


def test_a_message_keeps_its_brackets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Errors are text, not rich markup: an extra's ``[ray]`` is printed as it is."""
    import attnzoo.bench.executors as executors

    monkeypatch.setattr(executors, "require", _missing_ray)
    r = CliRunner().invoke(app, [*QUALITY, "--db", str(tmp_path / "r.duckdb"), "--executor",
                                 "ray"])  # fmt: skip
    assert r.exit_code == 1
    assert r.stderr.strip().endswith("pip install 'attnzoo[ray]'"), r.stderr


def _missing_ray(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    from attnzoo.extras import MissingExtra

    raise MissingExtra(extra, what, ["ray"])


def test_install_completion_writes_a_working_bash_completion(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "attnzoo"
    env = {**os.environ, "HOME": str(tmp_path), "SHELL": "/bin/bash"}
    # typer detects the user's shell from the parent process (sh under make and CI, which it
    # does not support); its test switch makes the option take the shell's name instead
    env["_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION"] = "1"
    p = subprocess.run([str(exe), "--install-completion", "bash"], env=env, text=True,
                       capture_output=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    script = tmp_path / ".bash_completions" / "attnzoo.sh"
    assert script.is_file() and str(script) in (tmp_path / ".bashrc").read_text()
    words = {**env, "_ATTNZOO_COMPLETE": "complete_bash", "COMP_WORDS": "attnzoo be",
             "COMP_CWORD": "1"}  # fmt: skip
    done = subprocess.run([str(exe)], env=words, text=True, capture_output=True, timeout=120)
    assert done.stdout.split() == ["bench"], (done.stdout, done.stderr)
