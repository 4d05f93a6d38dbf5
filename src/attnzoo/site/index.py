"""The site's index pages: the home page (every mechanism, one line each) and the pages by
family, by layout and by role (a section per value, linked from every mechanism's facts)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from attnzoo.report.common import esc, table, td
from attnzoo.site.common import (
    FACETS,
    INDEX,
    SitePage,
    facet_link,
    mechanism_link,
    page_file,
    slug,
)
from attnzoo.site.measured import Measured
from attnzoo.site.mechanism import mechanism_summary
from attnzoo.spec import FAMILIES, LAYOUTS, PATTERNS, ROLES, MixerSpec

SHORT = {"noncausal-self": "ncs", "causal-self": "cs", "noncausal-cross": "ncx",
         "causal-cross": "cx"}  # fmt: skip


def _rows(specs: Sequence[MixerSpec], measured: Measured | None) -> list[list[str]]:
    known = {s.name for s in specs}
    return [
        [f"<td>{mechanism_link(s.name)}</td>", td(mechanism_summary(s)),
         f"<td>{facet_link('family', s.family)}</td>", f"<td>{facet_link('layout', s.layout)}</td>",
         f"<td>{facet_link('role', s.role)}</td>",
         td(" ".join(SHORT.get(p, p) for p in PATTERNS if p in s.patterns)), td(s.state),
         td("yes" if s.exact else "no"), td(s.paper.year),
         _measured(s.name, measured)]
        for s in specs if s.name in known
    ]  # fmt: skip


def _measured(name: str, measured: Measured | None) -> str:
    kinds = measured.kinds(name) if measured is not None else []
    if not kinds:
        return td("not yet", "na")
    return "<td>" + ", ".join(f'<a href="{page_file(name)}#{k}">{k}</a>' for k in kinds) + "</td>"


HEAD = ["mechanism", "what it is", "family", "layout", "role", "patterns", "state", "exact",
        "year", "measured"]  # fmt: skip


def mechanisms_table(specs: Sequence[MixerSpec], measured: Measured | None, table_id: str) -> str:
    return table(HEAD, _rows(specs, measured), table_id)


def home_page(specs: Sequence[MixerSpec], measured: Measured | None, stamp: str) -> SitePage:
    """Every registered mechanism, one line each, and how the site was made."""
    source = (
        f"measurements from <code>{esc(measured.source)}</code>"
        if measured is not None
        else "no store given: every measured section says <b>not measured yet</b>"
    )
    facets = " · ".join(f'<a href="{f}">{esc(t)}</a>' for f, t in FACETS)
    legend = ", ".join(f"{v} = {k}" for k, v in SHORT.items())
    body = (
        f'<p class="muted">The {len(specs)} registered mechanisms of attnzoo, one page each: the '
        "math, the config, what it is verified against and what was measured. Generated "
        f"{esc(stamp)} from the registry; {source}. Browse {facets}.</p>"
        f'<p class="muted">Patterns: {esc(legend)}.</p>'
        + mechanisms_table(specs, measured, "mechanisms-table")
    )
    return SitePage(INDEX, "attnzoo mechanisms", body)


def _facet_page(file: str, title: str, intro: str, values: Sequence[str],
                describe: Callable[[str], str], members: Callable[[str], list[MixerSpec]],
                axis: str, measured: Measured | None) -> SitePage:  # fmt: skip
    parts = [f'<p class="muted">{intro}</p>']
    toc = " · ".join(f'<a href="#{axis}-{slug(v)}">{esc(v)}</a> ({len(members(v))})'
                     for v in values)  # fmt: skip
    parts.append(f'<p class="toc facets">{toc}</p>')
    for v in values:
        mine = members(v)
        text = describe(v)
        parts.append(
            f'<h2 id="{axis}-{slug(v)}">{esc(v)}</h2>' + (f"<p>{text}</p>" if text else "")
        )
        if mine:
            parts.append(mechanisms_table(mine, measured, f"{axis}-{slug(v)}-table"))
        else:
            parts.append('<p class="na">No registered mechanism.</p>')
    return SitePage(file, title, "\n".join(parts))


def facet_pages(specs: Sequence[MixerSpec], measured: Measured | None) -> list[SitePage]:
    """The pages by family, by layout and by role (every declared value, empty ones too)."""
    families = list(FAMILIES) + sorted({s.family for s in specs} - set(FAMILIES))
    layouts = list(LAYOUTS) + sorted({s.layout for s in specs} - set(LAYOUTS))
    roles = list(ROLES) + sorted({s.role for s in specs} - set(ROLES))

    def of(attr: str) -> Callable[[str], list[MixerSpec]]:
        return lambda v: [s for s in specs if getattr(s, attr) == v]

    def layout_text(v: str) -> str:
        lay = LAYOUTS.get(v)
        return f"<code>{esc(lay.shape)}</code>: {esc(lay.what)}" if lay else ""

    def role_text(v: str) -> str:
        role = ROLES.get(v)
        if role is None:
            return ""
        ctx = {"optional": "context optional (cross patterns)", "required": "context required",
               "none": "no context"}.get(role.context, role.context)  # fmt: skip
        return f"<code>{esc(role.signature)}</code>; {esc(ctx)}"

    return [
        _facet_page("families.html", "mechanisms by family", "Families say how a mechanism "
                    "mixes tokens (see <code>attnzoo.spec.FAMILIES</code>).", families,
                    lambda v: "",
                    of("family"), "family", measured),
        _facet_page("layouts.html", "mechanisms by layout", "The input layout: batch first, "
                    "channels last.", layouts, layout_text, of("layout"), "layout", measured),
        _facet_page("roles.html", "mechanisms by role", "What a block does with its inputs.",
                    roles, role_text, of("role"), "role", measured),
    ]  # fmt: skip
