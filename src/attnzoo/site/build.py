"""Build the static reference site: ``index.html``, the pages by family, layout and role, and one
``mechanism-<name>.html`` per registered mechanism, all in one folder, linked relatively (they
open from ``file://``), with inline CSS and inline SVG plots: no scripts, no external requests.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from attnzoo.registry import list_mixers
from attnzoo.site.common import INDEX, SitePage, page_file, render
from attnzoo.site.index import facet_pages, home_page
from attnzoo.site.measured import load
from attnzoo.site.mechanism import mechanism_page
from attnzoo.store import Store, default_path

SITE_TITLE = "attnzoo mechanisms"
OWNED = ("index.html", "families.html", "layouts.html", "roles.html")


def build_pages(store: Store | None) -> list[SitePage]:
    """Every page of the site (the home page first) from the registry and ``store``."""
    specs = list_mixers()
    names = [s.name for s in specs]
    files = [page_file(n) for n in names]
    if len(set(files)) != len(files) or any(f in OWNED for f in files):
        clash = sorted({f for f in files if files.count(f) > 1 or f in OWNED})
        raise ValueError(f"build_site: mechanism names map to the same page file: {clash}")
    measured = load(store)
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    pages = [home_page(specs, measured, stamp), *facet_pages(specs, measured)]
    pages += [mechanism_page(s, measured, names) for s in specs]
    return pages


def build_site(out_dir: Path, store: Store | None) -> list[Path]:
    """Write the site into ``out_dir`` (created if missing) and return the pages written, the
    index first. Mechanism pages of an earlier build whose mechanism is no longer registered are
    removed; other files in ``out_dir`` are left alone.

    Args:
        out_dir: the site's folder (``site/``).
        store: the results store for the measured sections, or ``None`` (every measured section
            then says "not measured yet" with the command that measures it).
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(
            f"--out {str(out_dir)!r} is a file; the site is a folder (it writes "
            f"FOLDER/{INDEX}): pass a folder, new or existing"
        )
    pages = build_pages(store)
    names = [p.file for p in pages if p.file.startswith("mechanism-")]
    mechanisms = [p.title for p in pages if p.file.startswith("mechanism-")]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for page in pages:
        path = out_dir / page.file
        tmp = path.with_suffix(".html.tmp")
        tmp.write_text(render(page, mechanisms, SITE_TITLE), encoding="utf-8")
        tmp.replace(path)  # a reader never sees a half-written page
        written.append(path)
    for old in out_dir.glob("mechanism-*.html"):
        if old.name not in names:
            old.unlink()
    return written


@dataclasses.dataclass(frozen=True)
class SiteResult:
    """What :func:`site_command` did: the index, every page and the store it read (or why it
    read none)."""

    index: Path
    pages: list[Path]
    store: Path | None
    note: str


def site_command(db: Path | None, out: Path, *, wait: float = 10.0) -> SiteResult:
    """``attnzoo docs``: build the site from the store at ``db`` (default ``$ATTNZOO_DB`` or
    ``./attnzoo.duckdb``) into ``out``. A missing store file is no error: the site is built
    from the registry alone and ``note`` says so.

    Raises:
        ValueError: ``out`` is a file, or mechanism names clash.
        StoreError: the store exists but cannot be read (a folder, damaged, foreign, locked
            too long).
        OSError: the folder cannot be written.
    """
    path = default_path(db)
    store = None
    note = ""
    if path.exists():
        store = Store(path, read_only=True, wait=wait)
    else:
        note = (
            f"no store at {path}: the measured sections say 'not measured yet' "
            "(`attnzoo bench speed` measures)"
        )
    pages = build_site(out, store)
    return SiteResult(pages[0], pages, path if store is not None else None, note)
