"""The HTML report: key tables have the expected rows, it is self-contained, it never imports torch."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import attnzoo as az
from attnzoo.report import build_report, write_report
from attnzoo.store import Store

SRC = Path(az.__file__).parent


def rows_of(page: str, table_id: str) -> list[str]:
    m = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', page, flags=re.S)
    assert m, f"table {table_id} missing"
    return re.findall(r"<tr>(.*?)</tr>", m.group(1), flags=re.S)


def test_key_tables_have_expected_rows(two_runs: tuple[Path, list[int]]) -> None:
    db, runs = two_runs
    store = Store(db, read_only=True)
    page = build_report(store)  # latest run by default
    assert f"run {runs[-1]}" in page
    caps = rows_of(page, "capability-table")
    assert len(caps) == len(az.list_mixers())
    for spec in az.list_mixers():
        row = next(r for r in caps if r.startswith(f"<td>{spec.name}</td>"))  # the name cell
        assert row.count(">verified<") == len(spec.patterns)
    speed = store.speed([runs[-1]])
    keys = {(r["mixer"], r["impl"], r["pattern"], r["mask"], r["mode"]) for r in speed}
    assert len(rows_of(page, "scaling-table")) == len(keys)
    assert len(rows_of(page, "gemm-table")) == len(keys)
    assert len(rows_of(page, "runs-table")) == 1
    assert (
        len(rows_of(page, "skips-table")) == len(store.skips([runs[-1]])) > 0
    )  # the 1 MiB budget skips
    # latency and memory x (4 patterns x fwd, fwdbwd + causal-self step)
    assert page.count("<svg") == 2 * (4 * 2 + 1)
    assert {r["mode"] for r in speed} == {"fwd", "fwdbwd", "step"}
    assert all(
        r["pattern"] == "causal-self" and r["mask"] == "causal"
        for r in speed
        if r["mode"] == "step"
    )
    for axis in ("sequence length T (tokens)", "latency (ms)", "peak memory (MiB)"):
        assert axis in page


def test_compare_runs(two_runs: tuple[Path, list[int]]) -> None:
    db, runs = two_runs
    page = build_report(Store(db, read_only=True), runs)
    assert len(rows_of(page, "runs-table")) == 2
    assert rows_of(page, "compare-table")
    assert f"run {runs[1]} / run {runs[0]}" in page


def test_self_contained(two_runs: tuple[Path, list[int]], tmp_path: Path) -> None:
    db, _ = two_runs
    path = write_report(Store(db, read_only=True), tmp_path / "out")
    page = path.read_text()
    assert path.name == "index.html" and not list(path.parent.glob("*.tmp"))
    assert not re.search(r'(?:src|href)\s*=\s*"(?:https?:)?//', page), (
        "external resource referenced"
    )
    assert "<script" not in page and "<link" not in page and "@import" not in page


def test_no_runs_is_a_clear_error(tmp_path: Path) -> None:
    store = Store(tmp_path / "empty.duckdb")
    with pytest.raises(ValueError, match="has no speed runs yet; run `attnzoo bench speed` first"):
        build_report(store)
    with pytest.raises(ValueError, match="--run 5: no such run"):
        build_report(store, [5])
