"""The HTML report on a real (tiny) speed run: one page per layout and pattern measured, key
tables have the expected rows, every page is self-contained, it never imports torch."""

from __future__ import annotations

import re
from collections import defaultdict
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


def layout_of(name: str) -> str:
    return next(s.layout for s in az.list_mixers() if s.name == name)


def test_key_tables_have_expected_rows(two_runs: tuple[Path, list[int]]) -> None:
    db, runs = two_runs
    store = Store(db, read_only=True)
    report = build_report(store)  # latest run by default
    index = report.page("index.html")
    assert f"speed run {runs[-1]}" in index
    caps = rows_of(report.page("capabilities.html"), "capability-table")
    assert len(caps) == len(az.list_mixers())
    for spec in az.list_mixers():
        row = next(r for r in caps if re.match(rf"<td><span [^>]*></span>{spec.name}</td>", r))
        assert row.count(">verified<") == len(spec.patterns)
    speed = store.speed([runs[-1]])
    pages: dict[str, list[dict]] = defaultdict(list)
    for r in speed:
        pages[f"{layout_of(r['mixer'])}-{r['pattern']}"].append(r)
    assert sorted(f for f in report.html if f.startswith("speed-")) == sorted(
        f"speed-{tag}.html" for tag in pages
    )
    n_svg = 0
    for tag, rs in pages.items():
        page = report.page(f"speed-{tag}.html")
        keys = {(r["mixer"], r["impl"], r["mask"], r["mode"]) for r in rs}
        assert len(rows_of(page, f"scaling-{tag}")) == len(keys)
        assert len(rows_of(page, f"gemm-{tag}")) == len(keys)
        assert len(rows_of(page, f"all-{tag}")) == len(rs)
        assert page.count("<svg") == sum(
            2 + any(len({r["impl"] for r in rs if (r["mixer"], r["mode"]) == (m, mode)
                         and r["mask"] in ("full", "causal")}) > 1 for m in {r["mixer"] for r in rs})
            for mode in {r["mode"] for r in rs}
        )  # fmt: skip  # latency, memory and (if any mechanism has two impls) the impl panels
        n_svg += page.count("<svg")
        if tag.endswith("self") and len({r["mask"] for r in rs}) > 1:
            assert len(rows_of(page, f"masks-{tag}")) > 0
    assert n_svg >= 2 * 9  # 4 token patterns x fwd, fwdbwd + causal-self step, and grid2d
    assert len(rows_of(report.page("runs.html"), "runs-table")) == 1
    skips = store.skips([runs[-1]])
    assert len(rows_of(report.page("runs.html"), "skips-table")) == len(skips) > 0  # 1 MiB budget
    assert {r["mode"] for r in speed} == {"fwd", "fwdbwd", "step"}
    causal = report.page("speed-tokens-causal-self.html")
    for axis in ("sequence length T (tokens)", "latency (ms)", "peak memory (MiB)"):
        assert axis in causal
    assert "tokens T (grid cells)" in report.page("speed-grid2d-noncausal-self.html")
    # the tiny run measured one repeat: nothing is trusted and the top says so
    assert f"{len(speed)} timings: <b>0 ok</b>" in index
    assert len(rows_of(index, "summary-table")) >= len(pages)


def test_no_legend_holds_all_mechanisms(two_runs: tuple[Path, list[int]]) -> None:
    db, _ = two_runs
    report = build_report(Store(db, read_only=True))
    n_legends = 0
    for file, page in report.html.items():
        for svg in re.findall(r"<svg.*?</svg>", page, flags=re.S):
            for _, legend in re.findall(r'\n( *)<g id="legend_\d+">(.*?)\n\1</g>', svg, flags=re.S):
                entries = legend.count("<text")
                assert 0 < entries <= 20, f"{file}: a legend of {entries} entries"
                n_legends += 1
    assert n_legends > 0


def test_compare_runs(two_runs: tuple[Path, list[int]]) -> None:
    db, runs = two_runs
    report = build_report(Store(db, read_only=True), runs)
    assert len(rows_of(report.page("runs.html"), "runs-table")) == 2
    page = report.page("speed-tokens-causal-self.html")
    assert rows_of(page, "compare-tokens-causal-self")
    assert f"run {runs[1]} / run {runs[0]}" in page
    assert f"run {runs[0]}" in page and "line style: run" in page


def test_self_contained(two_runs: tuple[Path, list[int]], tmp_path: Path) -> None:
    db, _ = two_runs
    out = tmp_path / "out"
    (out).mkdir()
    (out / "speed-tokens-retired-pattern.html").write_text("stale")  # an older report's page
    (out / "notes.txt").write_text("mine")
    path = write_report(Store(db, read_only=True), out)
    assert path.name == "index.html" and not list(out.glob("*.tmp"))
    assert not (out / "speed-tokens-retired-pattern.html").exists()
    assert (out / "notes.txt").read_text() == "mine"
    written = sorted(p.name for p in out.glob("*.html"))
    index = path.read_text()
    for name in written:
        page = (out / name).read_text()
        assert not re.search(r'(?:src|href)\s*=\s*"(?:https?:)?//', page), (
            f"{name}: external resource referenced"
        )
        assert "<script" not in page and "<link" not in page and "@import" not in page
        assert f'href="{name}"' in index  # every page is linked from the index
        for target in re.findall(r'href="([^"#]+)', page):
            assert target in written, f"{name} links to missing {target}"


def test_no_runs_is_a_clear_error(tmp_path: Path) -> None:
    store = Store(tmp_path / "empty.duckdb")
    with pytest.raises(ValueError, match="has no speed runs yet; run `attnzoo bench speed` first"):
        build_report(store)
    with pytest.raises(ValueError, match="--run 5: no such run"):
        build_report(store, [5])
