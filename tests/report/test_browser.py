"""The report in a real headless Chromium: no console errors, no external requests, screenshot."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

import attnzoo as az
from attnzoo.report import write_report
from attnzoo.store import Store
from tests.report.test_quality_report import build_quality_store

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@contextlib.contextmanager
def opened(page_path: Path) -> Iterator[tuple[Page, list[str], list[str]]]:
    """The page in headless Chromium, with the console errors and the requests it made."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            "Chromium is not installed: `make test` installs Debian's chromium package (apt-get install chromium)"
        )
    errors: list[str] = []
    requests: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        yield page, errors, requests
        browser.close()


def test_report_renders_offline_in_chromium(
    two_runs: tuple[Path, list[int]], tmp_path: Path
) -> None:
    db, runs = two_runs
    index = write_report(Store(db, read_only=True), tmp_path / "report", runs)
    pages = sorted(p.name for p in index.parent.glob("*.html"))
    assert "index.html" in pages and any(p.startswith("speed-tokens-") for p in pages)
    assert any(p.startswith("speed-grid2d-") for p in pages)
    for name in pages:  # every page: no console error, nothing fetched but itself
        page_path = index.parent / name
        with opened(page_path) as (page, errors, requests):
            page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
            widths = [box["width"] for svg in page.locator("svg").all()
                      if (box := svg.bounding_box())]  # fmt: skip
            links = page.locator("nav a").count()
            if name == "index.html":
                summary_top = page.locator("#summary-table").bounding_box()["y"]
                page.screenshot(path=str(ARTIFACTS / "report.png"))
            elif name == "capabilities.html":
                shown = page.locator("#capability-table tbody tr td:first-child").all_inner_texts()
            elif name == "speed-tokens-causal-self.html":
                page.screenshot(path=str(ARTIFACTS / "report-speed.png"), full_page=True)
        assert errors == [], f"{name}: {errors}"
        assert requests == [page_path.as_uri()], f"{name}: unexpected requests: {requests}"
        assert links == len(pages), f"{name}: its navigation misses pages"
        if name.startswith("speed-"):
            assert len(widths) >= 2 and min(widths) > 300, f"{name}: plots {widths}"
    assert summary_top < 900  # the answer starts on the first screen
    assert sorted(t.strip() for t in shown) == sorted(s.name for s in az.list_mixers())
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def test_quality_section_renders_in_chromium(tmp_path: Path) -> None:
    store, ids = build_quality_store(tmp_path / "q.duckdb")
    page_path = write_report(store, tmp_path / "report").parent / "quality.html"
    with opened(page_path) as (page, errors, requests):
        suites = page.locator("#quality-table tbody tr td:first-child").all_inner_texts()
        n_svg = page.locator("#quality svg").count()
        zoo = page.locator(f"#quality-run-{ids['zoology']} ~ div.grid figure").first
        zoo_w = zoo.locator("svg").bounding_box()["width"]
        heading = page.locator(f"#quality-{ids['regression']}-regression").inner_text()
        page.locator("#quality").screenshot(path=str(ARTIFACTS / "report-quality.png"))
    assert errors == []
    assert requests == [page_path.as_uri()], f"unexpected requests: {requests}"
    # the older zoology run trained a point the newer one did not: both are shown
    assert suites == ["zoology", "zoology", "regression", "pointer"]
    assert n_svg == 12
    assert zoo_w > 900  # MQAR's two grid-point panels span the grid's full width
    assert heading == "task regression: MSE (lower is better)"
