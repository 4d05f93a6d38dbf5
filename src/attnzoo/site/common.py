"""What every page of the reference site shares: file names, the navigation, the frame (inline
CSS, no scripts, no external resources) and the "not measured yet" notes."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from attnzoo.report.common import esc
from attnzoo.report.html import CSS as REPORT_CSS

INDEX = "index.html"
FACETS = (("families.html", "by family"), ("layouts.html", "by layout"), ("roles.html", "by role"))
FACET_FILES = {"family": "families.html", "layout": "layouts.html", "role": "roles.html"}

CSS = (
    REPORT_CSS
    + """
body{max-width:1100px}
nav.mechs{border-bottom:1px solid #eee;font-size:.8rem}
nav .label{color:#666}
.doc{max-width:52rem} .doc p.indent{margin-left:1.6rem}
pre{background:#f6f6f2;border:1px solid #e2e2dc;padding:.5rem .8rem;overflow-x:auto;font-size:.85rem;
line-height:1.35}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.88em}
pre code{font-size:inherit}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:.6rem 0;
font-size:.9rem} dl.facts dt{font-weight:600;color:#333} dl.facts dd{margin:0}
.toc{font-size:.85rem;color:#444} .toc a{margin-right:.7rem} .toc.facets a{margin-right:0}
.summary{font-size:1.02rem;color:#333;max-width:52rem}
ul.checks li{margin:.2rem 0}
td.yes{color:#0a6b2f} td.no{color:#999}
figure.plot{max-width:760px}
"""
)


def slug(text: str) -> str:
    """``text`` as a file-name and id fragment: letters, digits, ``_``, ``.`` and ``-``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def page_file(name: str) -> str:
    """The file of a mechanism's page (``mechanism-lightning.html``)."""
    return f"mechanism-{slug(name)}.html"


def facet_link(axis: str, value: str) -> str:
    """A link to ``value``'s section of the ``axis`` page (``family``, ``layout`` or ``role``)."""
    if axis not in FACET_FILES:
        raise ValueError(f"facet_link: axis must be one of {tuple(FACET_FILES)}, got {axis!r}")
    return f'<a href="{FACET_FILES[axis]}#{axis}-{slug(value)}">{esc(value)}</a>'


def mechanism_link(name: str, known: Sequence[str] | None = None) -> str:
    """A link to a mechanism's page, or its name alone when it has none (``known`` given and
    without it: a mechanism stored by a run but no longer registered)."""
    if known is not None and name not in known:
        return f"<code>{esc(name)}</code>"
    return f'<a href="{page_file(name)}"><code>{esc(name)}</code></a>'


def not_measured(what: str, command: str, hint: str = "") -> str:
    """The note of a section the store has nothing for, with the command that measures it
    (and ``hint``, HTML, after it)."""
    return (
        f'<p class="na">Not measured yet: no {esc(what)} in the store. '
        f"<code>{esc(command)}</code> measures it{hint}; then rebuild this site with "
        "<code>attnzoo docs --db attnzoo.duckdb --out site/</code>.</p>"
    )


@dataclasses.dataclass(frozen=True)
class SitePage:
    """One page: file name, ``<title>`` and ``<h1>`` text, the body HTML."""

    file: str
    title: str
    body: str
    heading_html: str = ""  # the <h1>'s HTML when it is more than the escaped title


def render(page: SitePage, mechanisms: Sequence[str], site_title: str) -> str:
    """The full HTML document of ``page``: the two navigation bars (site pages; every
    mechanism), the heading and the body."""
    top = [(INDEX, "home"), *FACETS]
    nav = "".join(
        f'<a href="{f}"' + (' aria-current="page"' if f == page.file else "") + f">{esc(t)}</a>"
        for f, t in top
    )
    mechs = "".join(
        f'<a href="{page_file(n)}"'
        + (' aria-current="page"' if page_file(n) == page.file else "")
        + f">{esc(n)}</a>"
        for n in mechanisms
    )
    heading = page.heading_html or esc(page.title)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(page.title)} · {esc(site_title)}</title><style>{CSS}</style></head><body>\n"
        f'<nav aria-label="site"><b>{esc(site_title)}</b>{nav}</nav>\n'
        f'<nav class="mechs" aria-label="mechanisms"><span class="label">mechanisms:</span>'
        f"{mechs}</nav>\n<h1>{heading}</h1>\n<main>\n{page.body}\n</main>\n</body></html>\n"
    )
