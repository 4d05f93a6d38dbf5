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
    page_path = write_report(Store(db, read_only=True), tmp_path / "report", runs)
    with opened(page_path) as (page, errors, requests):
        shown = page.locator("#capability-table tbody tr td:first-child").all_inner_texts()
        n_svg = page.locator("svg").count()
        visible_w = page.locator("#latency svg").first.bounding_box()["width"]
        page.screenshot(path=str(ARTIFACTS / "report.png"))
        page.screenshot(path=str(ARTIFACTS / "report-full.png"), full_page=True)
    assert errors == []
    assert requests == [page_path.as_uri()], f"unexpected requests: {requests}"
    assert sorted(shown) == sorted(s.name for s in az.list_mixers())
    assert n_svg >= 18 and visible_w > 300
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def test_quality_section_renders_in_chromium(tmp_path: Path) -> None:
    store, ids = build_quality_store(tmp_path / "q.duckdb")
    page_path = write_report(store, tmp_path / "report")
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
