"""Every page of the site in one headless Chromium (launched as the report's browser test does):
no console errors, no request but the page itself, and every ``<a href>`` resolving to a page
and element of the site, or an http(s) link out (counted, never fetched)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from playwright.sync_api import sync_playwright

import attnzoo as az
from attnzoo.site.common import page_file
from tests.report.test_browser import ARTIFACTS, CHROMIUM, FLAGS

HREFS = "[...document.querySelectorAll('a[href]')].map(a => [a.getAttribute('href'), a.href])"
IDS = "[...document.querySelectorAll('[id]')].map(e => e.id)"


def test_every_page_renders_offline_and_every_link_resolves(measured_site: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: `make test` installs Debian's chromium package")
    pages = sorted(measured_site.glob("*.html"))
    assert len(pages) == len(az.list_mixers()) + 4
    ids: dict[Path, set[str]] = {}
    links: list[tuple[str, str, str]] = []  # (page, href as written, href resolved)
    problems: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        errors: list[str] = []
        requests: list[str] = []
        failed: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.on("requestfailed", lambda r: failed.append(r.url))
        for path in pages:
            for seen in (errors, requests, failed):
                seen.clear()
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            ids[path.resolve()] = set(page.evaluate(IDS))
            links += [(path.name, raw, url) for raw, url in page.evaluate(HREFS)]
            if path.name == page_file("linear"):
                widths = [b["width"] for s in page.locator("#speed ~ figure svg").all()
                          if (b := s.bounding_box())]  # fmt: skip
                page.screenshot(path=str(ARTIFACTS / "site-mechanism.png"), full_page=True)
            problems += [f"{path.name}: console: {e}" for e in errors]
            problems += [f"{path.name}: failed request {u}" for u in failed]
            problems += [f"{path.name}: requested {u}" for u in requests if u != path.as_uri()]
        browser.close()
    external = 0
    root = measured_site.resolve()
    for name, raw, url in links:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https"):
            external += 1  # a paper or code link: counted, not fetched
            continue
        target = Path(unquote(parts.path)).resolve()
        if parts.scheme != "file" or not target.is_relative_to(root) or target not in ids:
            problems.append(f"{name}: {raw!r} is not a page of the site")
        elif parts.fragment and unquote(parts.fragment) not in ids[target]:
            problems.append(f"{name}: {raw!r}: {target.name} has no id {parts.fragment!r}")
    assert not problems, "\n".join(problems)
    assert external >= 2 * len(az.list_mixers())  # every page links its paper and code
    assert len(links) > 1000
    assert widths and min(widths) > 300, widths  # the speed plot is drawn at a readable size
