"""The site's link checker: every ``href``/``src`` of every page resolves to a file inside the
site (and its ``#fragment`` to an element id of that file), or is an http(s) link out (a paper,
official code), which is counted and never fetched. Anything else is a problem."""

from __future__ import annotations

import dataclasses
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

EXTERNAL = ("http", "https")


class _Parser(HTMLParser):
    """Collects element ids and ``(tag, attribute, value)`` of every link-like attribute."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if value is None:
                continue
            if key == "id" or (tag == "a" and key == "name"):
                self.ids.add(value)
            elif key in ("href", "src") or (key == "xlink:href" and tag == "a"):
                self.refs.append((tag, key, value))


@dataclasses.dataclass(frozen=True)
class LinkReport:
    """What :func:`check_links` found.

    Attributes:
        pages: the HTML files checked (relative to the site).
        internal: links checked inside the site.
        external: the http(s) links out, ``(page, url)`` (not fetched).
        problems: one line per broken or forbidden link, naming the page and the target.
    """

    pages: list[str]
    internal: int
    external: list[tuple[str, str]]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def parse(path: Path) -> tuple[set[str], list[tuple[str, str, str]]]:
    """The ids and link attributes of one HTML file."""
    p = _Parser()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    return p.ids, p.refs


def check_links(site: Path) -> LinkReport:
    """Check every link of every ``*.html`` file under ``site``.

    An ``<a href>`` inside the site must name an existing file (and, with ``#id``, an element
    with that id in it); ``href`` and ``src`` of other tags (stylesheets, images, scripts) must
    not leave the site either, so a page never fetches anything. ``file:``, ``//host``,
    ``javascript:`` and other schemes are problems.
    """
    root = site.resolve()
    if not root.is_dir():
        raise ValueError(f"check_links: site must be a folder of HTML pages, got {site}")
    files = sorted(root.rglob("*.html"))
    parsed = {f: parse(f) for f in files}
    internal, external, problems = 0, [], []
    for f, (_, refs) in parsed.items():
        page = f.relative_to(root).as_posix()
        for tag, attr, value in refs:
            where = f"{page}: <{tag} {attr}={value!r}>"
            parts = urlsplit(value)
            if parts.scheme in EXTERNAL and parts.netloc:
                if tag != "a":
                    problems.append(f"{where} loads a resource from outside the site")
                else:
                    external.append((page, value))
                continue
            if parts.scheme or parts.netloc:
                problems.append(f"{where}: only relative links and http(s) links out are allowed")
                continue
            internal += 1
            target = f if not parts.path else (f.parent / unquote(parts.path)).resolve()
            if not target.is_relative_to(root):
                problems.append(f"{where} points outside the site ({target})")
                continue
            if not target.is_file():
                rel = target.relative_to(root).as_posix()
                problems.append(f"{where}: no such page {rel!r} in the site")
                continue
            frag = unquote(parts.fragment)
            if frag:
                ids = parsed[target][0] if target in parsed else parse(target)[0]
                if frag not in ids:
                    rel = target.relative_to(root).as_posix()
                    problems.append(f"{where}: {rel!r} has no element with id {frag!r}")
    pages = [f.relative_to(root).as_posix() for f in files]
    return LinkReport(pages, internal, external, problems)
