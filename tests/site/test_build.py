"""The reference site: a page per registered mechanism with its whole config, the index pages,
the measured sections from a store (and "not measured yet" without one), the link checker."""

from __future__ import annotations

import re
import shutil
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import pytest

import attnzoo as az
from attnzoo.site import build_site, check_links, site_command
from attnzoo.site.common import page_file
from attnzoo.site.docstring import doc_html
from attnzoo.store import Store
from tests.report.synthetic import speed_row, speed_run

NOT_MEASURED = "Not measured yet"


class _Rows(HTMLParser):
    """The text of the first cell of each body row of the table with id ``table_id``."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id, self.inside, self.depth = table_id, False, 0
        self.in_body, self.cell, self.first = False, -1, ""
        self.keys: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and dict(attrs).get("id") == self.table_id:
            self.inside = True
        elif self.inside and tag == "tbody":
            self.in_body = True
        elif self.in_body and tag == "tr":
            self.cell, self.first = -1, ""
        elif self.in_body and tag == "td":
            self.cell += 1

    def handle_endtag(self, tag: str) -> None:
        if self.in_body and tag == "tr":
            self.keys.append(self.first.strip())
        elif tag == "table" and self.inside:
            self.inside = self.in_body = False

    def handle_data(self, data: str) -> None:
        if self.in_body and self.cell == 0:
            self.first += data


def first_column(html: str, table_id: str) -> list[str]:
    parser = _Rows(table_id)
    parser.feed(html)
    return parser.keys


def read(site: Path, name: str) -> str:
    return (site / page_file(name)).read_text(encoding="utf-8")


@pytest.mark.parametrize("which", ["measured_site", "bare_site"])
def test_every_mechanism_has_a_page_with_its_whole_config(
    which: str, request: pytest.FixtureRequest
) -> None:
    site: Path = request.getfixturevalue(which)
    specs = az.list_mixers()
    assert {p.name for p in site.glob("mechanism-*.html")} == {page_file(s.name) for s in specs}
    for f in ("index.html", "families.html", "layouts.html", "roles.html"):
        assert (site / f).is_file(), f
    home = (site / "index.html").read_text(encoding="utf-8")
    for spec in specs:
        html = read(site, spec.name)
        assert f'href="{page_file(spec.name)}"' in home, spec.name
        assert first_column(html, "config-table") == spec.config.field_names(), spec.name
        for f in spec.config.describe():  # type, default, limits and description, as rendered
            cells = (f"<code>{escape(f.type)}</code>", f"<code>{escape(f.default)}</code>",
                     f"<td>{escape(f.limits)}</td>" if f.limits else '<td class="na">—</td>',
                     f"<td>{escape(f.description or '(undocumented)')}</td>")  # fmt: skip
            row = html.split(f'id="cfg-{f.name}"', 1)[1].split("</tr>", 1)[0]
            assert all(c in row for c in cells), (spec.name, f.name, row)
        assert spec.paper.url in html and spec.complexity.split(" ")[0] in html
        assert first_column(html, "patterns-table") == list(az.PATTERNS)
        if getattr(spec, "export", None) is not None:
            assert 'id="export-table"' in html, spec.name


def test_facet_pages_list_every_mechanism_under_its_value(measured_site: Path) -> None:
    for axis, file in (("family", "families.html"), ("layout", "layouts.html"),
                       ("role", "roles.html")):  # fmt: skip
        html = (measured_site / file).read_text(encoding="utf-8")
        for spec in az.list_mixers():
            value = getattr(spec, axis)
            section = html.split(f'id="{axis}-{value}"', 1)[1].split("<h2", 1)[0]
            assert f'href="{page_file(spec.name)}"' in section, (axis, spec.name)


def test_without_a_store_every_measured_section_says_how_to_measure(bare_site: Path) -> None:
    for spec in az.list_mixers():
        html = read(bare_site, spec.name)
        assert html.count(NOT_MEASURED) == 3, spec.name  # speed, quality, peers
        assert f"attnzoo bench speed --mixers {spec.name}" in html
        assert f"attnzoo bench quality --mixers {spec.name}" in html
        assert "<svg" not in html
    assert "no store given" in (bare_site / "index.html").read_text(encoding="utf-8")


def test_measured_sections_show_the_store(measured_site: Path) -> None:
    linear = read(measured_site, "linear")
    speed = linear.split('id="speed"', 1)[1].split('id="quality"', 1)[0]
    assert "<svg" in speed and 'id="speed-table-causal-self-causal-fwd"' in speed
    assert first_column(speed, "speed-table-causal-self-causal-fwd") == ["256", "1024", "4096"]
    assert "~16.000" in speed and "noisy" in speed  # the report's trust marks
    assert re.search(r"1\.00 \(95% CI 1\.00\.\.1\.00, R² 1\.000\)", speed)  # time ~ T
    quality = linear.split('id="quality"', 1)[1].split('id="peers"', 1)[0]
    assert "0.750" in quality and "3 of 3" in quality and page_file("softmax") in quality
    assert "mqar L=64, kv=4" in quality and "<svg" in quality
    peers = linear.split('id="peers"', 1)[1]
    assert "2.00x" in peers and "unreliable" in peers
    assert NOT_MEASURED not in linear
    # the grid mechanism's sizes are grids; softmax is the best at the point
    area = read(measured_site, "area")
    assert first_column(area, "speed-table-noncausal-self-full-fwd")[0] == "16×16 (256)"
    assert 'class="num ok">0.990' in read(measured_site, "softmax")
    # an unmeasured mechanism says so, section by section
    assert read(measured_site, "aaren").count(NOT_MEASURED) == 3


def test_exponent_only_where_the_lengths_support_one(tmp_path: Path) -> None:
    store = Store(tmp_path / "two.duckdb")
    speed_run(store, [speed_row("linear", 64, 1.0), speed_row("linear", 128, 2.0)])
    build_site(tmp_path / "site", store)
    html = read(tmp_path / "site", "linear")
    assert "2 length(s); an exponent needs at least 3" in html
    assert "95% CI" not in html


def test_site_command_builds_without_a_store_and_refuses_a_file(tmp_path: Path) -> None:
    result = site_command(tmp_path / "missing.duckdb", tmp_path / "out")
    assert result.index == tmp_path / "out" / "index.html" and result.store is None
    assert "no store at" in result.note and len(result.pages) == len(az.list_mixers()) + 4
    stale = tmp_path / "out" / "mechanism-retired.html"
    stale.write_text("old")
    site_command(tmp_path / "missing.duckdb", tmp_path / "out")
    assert not stale.exists()  # a page of a mechanism no longer registered goes
    empty = tmp_path / "empty.duckdb"
    Store(empty)  # a store without runs: the site says what to measure, page by page
    result = site_command(empty, tmp_path / "from-empty")
    assert result.store == empty and result.note == ""
    assert all(p.read_text(encoding="utf-8").count(NOT_MEASURED) == 3
               for p in result.pages if p.name.startswith("mechanism-"))  # fmt: skip
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; the site is a folder"):
        site_command(None, tmp_path / "file")


def test_docstrings_keep_their_math_and_structure() -> None:
    html = doc_html(
        "Title.\n\nSee https://arxiv.org/abs/1 (paper).\n\nPer head::\n\n    o_t = Σ_s q·k\n\n"
        "- ``a``: first\n  continued\n- **b**: second\n\n2. two\n3. three\n"
    )
    assert "<pre>o_t = Σ_s q·k</pre>" in html
    assert (
        '<a href="https://arxiv.org/abs/1" rel="noreferrer">https://arxiv.org/abs/1</a> (' in html
    )
    assert "<ul>\n<li><code>a</code>: first continued</li>" in html
    assert "<li><strong>b</strong>: second</li>" in html and '<ol start="2">' in html


def test_the_checker_passes_both_sites(measured_site: Path, bare_site: Path) -> None:
    for site in (measured_site, bare_site):
        report = check_links(site)
        assert report.ok, report.problems
        assert len(report.pages) == len(az.list_mixers()) + 4
        assert report.internal > 1000 and report.external  # paper and code links, not fetched


def test_the_checker_catches_a_broken_link(measured_site: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(measured_site, site)
    (site / page_file("gla")).unlink()  # every link to it breaks
    home = site / "index.html"
    text = home.read_text(encoding="utf-8")
    text = text.replace('href="families.html#family-', 'href="families.html#nofamily-', 1)
    text = text.replace("</main>", '<a href="file:///etc/passwd">x</a><img src="https://x.org/a.png">'
                        "</main>")  # fmt: skip
    home.write_text(text, encoding="utf-8")
    problems = check_links(site).problems
    missing = [p for p in problems if f"no such page '{page_file('gla')}'" in p]
    assert len(missing) >= len(az.list_mixers())  # from every page's navigation
    assert any("index.html" in p and "has no element with id 'nofamily-" in p for p in problems)
    assert any("file:///etc/passwd" in p and "only relative links" in p for p in problems)
    assert any("https://x.org/a.png" in p and "outside the site" in p for p in problems)
