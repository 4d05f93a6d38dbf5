"""One page per registered mechanism: what it is (summary, facts, paper, what it is verified
against), how it works (its module and class docstrings), its patterns and masks, its config,
how to call it, export support (when the spec declares it) and what the store measured."""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from attnzoo.config import attributes, plain
from attnzoo.report.common import esc, table, td
from attnzoo.site.common import SitePage, facet_link, page_file
from attnzoo.site.configdoc import checks_html, config_table
from attnzoo.site.docstring import doc_html, summary
from attnzoo.site.measured import Measured
from attnzoo.site.results import peers_section, quality_section
from attnzoo.site.speed import speed_section
from attnzoo.spec import LAYOUTS, PATTERNS, ROLES, MixerSpec

SECTIONS = (("facts", "facts"), ("how", "how it works"), ("patterns", "patterns and masks"),
            ("config", "config"), ("use", "use"), ("export", "export"), ("speed", "speed"),
            ("quality", "quality"), ("peers", "peers"))  # fmt: skip


def module_doc(spec: MixerSpec) -> str:
    """The docstring of the module that defines the mechanism's block (``""`` if none)."""
    module = sys.modules.get(spec.cls.__module__)
    return inspect.getdoc(module) or "" if module is not None else ""


def mechanism_summary(spec: MixerSpec) -> str:
    """One line: the first paragraph of the block's docstring, else the class's."""
    return summary(module_doc(spec)) or summary(vars(spec.cls).get("__doc__")) or spec.name


def mechanism_page(spec: MixerSpec, measured: Measured | None, known: Sequence[str]) -> SitePage:
    """The page of ``spec``; ``known``: every registered name (links to other pages)."""
    export = getattr(spec, "export", None)
    shown = [(sid, title) for sid, title in SECTIONS if sid != "export" or export is not None]
    toc = "".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title in shown)
    parts = [
        f'<p class="summary">{esc(mechanism_summary(spec))}</p>',
        f'<p class="toc">On this page: {toc}</p>',
        _h2("facts", "Facts"), _facts(spec),
        _h2("how", "How it works"), _how(spec),
        _h2("patterns", "Patterns and masks"), _patterns(spec),
        _h2("config", "Config"),
        f"<p>Keyword arguments of <code>az.build_mixer({esc(repr(spec.name))}, d_model=..., ...)"
        f"</code>, validated by <code>{esc(spec.config.__name__)}</code> (frozen; an unknown "
        "key is an error that names the closest valid one).</p>",
        config_table(spec.config, "config-table"), checks_html(spec.config),
        _h2("use", "Use"), f"<pre><code>{esc(usage(spec))}</code></pre>",
    ]  # fmt: skip
    if export is not None:
        parts += [_h2("export", "Export"), export_html(export)]
    parts += [
        _h2("speed", "Measured speed"),
        speed_section(spec, measured.speed.get(spec.name) if measured else None),
        _h2("quality", "Quality"), quality_section(spec.name, measured, known),
        _h2("peers", "Against its peer"),
        peers_section(measured.peers.get(spec.name) if measured else None),
    ]  # fmt: skip
    heading = f'<code>{esc(spec.name)}</code> <span class="muted">{esc(spec.paper.title)}</span>'
    return SitePage(page_file(spec.name), spec.name, "\n".join(parts), heading)


def _h2(sid: str, title: str) -> str:
    return f'<h2 id="{sid}">{esc(title)}</h2>'


def _link(url: str, text: str | None = None) -> str:
    if not url.startswith(("http://", "https://")):
        return esc(url or "—")
    return f'<a href="{esc(url)}" rel="noreferrer">{esc(text or url)}</a>'


def _facts(spec: MixerSpec) -> str:
    lay = LAYOUTS[spec.layout]
    role = ROLES[spec.role]
    ctx = spec.context_layout
    paper = spec.paper
    code = _link(paper.code) if paper.code else "no official code released"
    impls = ", ".join(f"<code>{esc(i)}</code>" for i in spec.impls) or "—"
    fast = ", ".join(spec.fast_impls) or "none"
    rows = [
        ("family", facet_link("family", spec.family)),
        ("layout", f"{facet_link('layout', spec.layout)} <code>{esc(lay.shape)}</code>: "
                   f"{esc(lay.what)}"),
        ("context", "none (no cross pattern)" if ctx is None
         else f"{facet_link('layout', ctx)} <code>{esc(LAYOUTS[ctx].shape)}</code> "
              "(its size and width may differ from x's)"),
        ("role", f"{facet_link('role', spec.role)} <code>{esc(role.signature)}</code>"),
        ("patterns", ", ".join(esc(p) for p in spec.patterns)),
        ("state", esc(spec.state) + {"none": " (no streaming step)",
                                     "constant": " (constant-size streaming state)",
                                     "growing": " (a state that grows with T, e.g. a KV cache)"
                                     }.get(spec.state, "")),
        ("exact", "yes: computes softmax attention exactly" if spec.exact else "no"),
        ("attention maps", "yes: <code>m.attention_maps(x)</code>" if spec.attention_maps
         else "no"),
        ("impls", f"{impls} <span class=\"muted\">(checked against <code>reference</code>: "
                  f"{esc(fast)})</span>"),
        ("complexity", f"<code>{esc(spec.complexity)}</code>"),
        ("paper", f"{_link(paper.url, paper.title)} ({paper.year})"),
        ("official code", code),
        ("verified against", esc(spec.peer)),
    ]  # fmt: skip
    items = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in rows)
    return f'<dl class="facts">{items}</dl>'


def _how(spec: MixerSpec) -> str:
    text = module_doc(spec)
    first, _, rest = text.partition("\n\n")
    out = doc_html(rest) if rest.strip() else ""
    own = vars(spec.cls).get("__doc__")
    if own and own.strip():
        out += f"<h3>{esc(spec.cls.__name__)}</h3>" + doc_html(own)
    return f'<div class="doc">{out or "<p class=na>No docstring.</p>"}</div>'


def _patterns(spec: MixerSpec) -> str:
    body = []
    for p in PATTERNS:
        ok = p in spec.patterns
        masks = ", ".join(spec.masks_for(p)) if ok else "—"
        body.append([td(p), td("yes" if ok else "no", "yes" if ok else "no"), td(masks)])
    return (
        '<p class="muted">The four CAB patterns: <code>causal=True</code> selects the causal ones; '
        "passing <code>context</code> selects the cross ones. Masks: the mask kinds a call in "
        f"that pattern can use (declared: {esc(', '.join(spec.masks))}).</p>"
        + table(["pattern", "supported", "masks"], body, "patterns-table")
    )


def usage(spec: MixerSpec) -> str:
    """A short example call for the mechanism's layout, role, patterns and state."""
    lay = LAYOUTS[spec.layout]
    role = ROLES[spec.role]
    causal_only = all(p.startswith("causal") for p in spec.patterns)
    both = not causal_only and any(p.startswith("causal") for p in spec.patterns)
    args = "d_model=64" + (", causal=True" if causal_only else "")
    out_shape = "[B, D]" if role.pooled else lay.shape
    lines = ["import attnzoo as az", "", f"m = az.build_mixer({spec.name!r}, {args})"]
    if both:
        lines[-1] += "  # causal=True: the causal patterns"
    ctx = LAYOUTS[spec.context_layout].shape if spec.context_layout else ""
    if role.context != "required":
        self_p = [p for p in spec.patterns if p.endswith("self")]
        if self_p:
            lines.append(f"y = m(x)  # x {lay.shape} -> {out_shape}")
    if spec.context_layout:
        lines.append(f"y = m(x, context=c)  # c {ctx}, its own size -> {out_shape}")
    if spec.state != "none" and any(p.startswith("causal") for p in spec.patterns):
        lines += ["state = m.init_state(batch_size=B)",
                  "y_t, state = m.step(x_t, state)  # equals m(x)[:, t] of the causal call"]  # fmt: skip
    if spec.attention_maps:
        lines.append("maps = m.attention_maps(x)  # the attention weights")
    return "\n".join(lines)


def export_html(export: Any) -> str:
    """The spec's export support: per step, ``works`` or why not (an
    :class:`attnzoo.spec.ExportSupport`, read through its ``reason(step)`` when it has one, so
    a ``torch`` failure shows on every step; the step's meaning from its ``Attributes:``)."""
    if dataclasses.is_dataclass(export) and not isinstance(export, type):
        steps = [f.name for f in dataclasses.fields(export)]
        meaning = attributes(type(export))
    elif isinstance(export, Mapping):
        steps, meaning = list(export), {}
    else:
        return f"<p>{esc(export)}</p>"
    body = []
    for step in steps:
        reason = export.reason(step) if hasattr(export, "reason") else _get(export, step)
        works = reason == "" or reason is True
        text = "works" if works else ("no" if reason in (False, None) else str(reason))
        when = plain(meaning.get(step, "")).removeprefix("why ")
        body.append([f"<td><code>{esc(step)}</code></td>", td(when),
                     td(text, "ok" if works else "bad")])  # fmt: skip
    summary_text = getattr(export, "summary", "")
    lead = (
        f"<p>Exports: <b>{esc(summary_text)}</b>.</p>"
        if isinstance(summary_text, str) and summary_text
        else ""
    )
    return lead + (
        '<p class="muted">Checked by the contract tests on CPU float32 in eval mode with '
        '<code>impl="auto"</code>, for every pattern the block declares.</p>'
        + table(["step", "fails when", "status"], body, "export-table")
    )


def _get(export: Any, step: str) -> Any:
    return export[step] if isinstance(export, Mapping) else getattr(export, step, None)
