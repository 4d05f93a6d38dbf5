"""Fault injection: a truncated, zeroed or garbage-tailed store under every command that opens
one. A damaged store gives one line naming the file and what to do, before any measurement, and
is never written; a store with garbage after its end still reads whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnzoo.cli import app
from attnzoo.store import Store
from tests.store.test_store import SPEED_ROW, new_run

COMMANDS = {
    "results": ["results"],
    "report": ["report", "--out", "{tmp}/report"],
    "bench speed": ["bench", "speed", "--mixers", "softmax", "--seq-lens", "64", "--no-progress"],
    "bench peers": ["bench", "peers", "--cases", "linear/fla-naive-chunk", "--sizes", "64",
                    "--no-progress"],
    "bench quality": ["bench", "quality", "--mixers", "linear", "--d-model", "16", "--steps", "2",
                      "--no-progress"],
    "bench cp": ["bench", "cp", "--world-size", "1", "--seq-lens", "64", "--no-progress"],
    "store check": ["store", "check"],
}  # fmt: skip


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "zeroed":
        path.write_bytes(bytes(len(data)))
    elif how == "garbage-tailed":
        path.write_bytes(data + os.urandom(64 * 1024))
    else:
        raise ValueError(how)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "s.duckdb"
    s = Store(path)
    run = new_run(s)
    for t in (64, 128, 256):
        s.add_speed(run, {**SPEED_ROW, "seq_len": t})
    s.finish_run(run, "complete")
    return path


@pytest.mark.parametrize("how", ["truncated", "zeroed"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_damaged_store_one_clear_line_and_nothing_measured(
    store: Path, tmp_path: Path, command: str, how: str
) -> None:
    damage(store, how)
    before = store.read_bytes()
    args = [a.replace("{tmp}", str(tmp_path)) for a in COMMANDS[command]]
    r = CliRunner().invoke(app, [*args, "--db", str(store)])
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert str(store.name) in lines[0] and ("damaged" in lines[0])
    assert "restore it from a backup" in lines[0] or "store repair" in lines[0]
    assert "GEMM rate" not in r.output  # refused before the bench started work
    assert store.read_bytes() == before  # never written


@pytest.mark.parametrize("command", ["results", "store check"])
def test_garbage_after_the_end_reads_whole(store: Path, command: str) -> None:
    damage(store, "garbage-tailed")
    r = CliRunner().invoke(app, [*COMMANDS[command], "--db", str(store), *(["--format", "csv"] if command == "results" else [])])  # fmt: skip
    assert r.exit_code == 0, r.output
    if command == "results":
        assert r.stdout.count("\n") == 4  # header + the three rows
    assert len(Store(store, read_only=True).speed()) == 3
