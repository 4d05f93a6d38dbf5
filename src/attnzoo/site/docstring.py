"""A mechanism's docstring as simple HTML: paragraphs, bullet and numbered lists, literal blocks
(after ``::``) in ``<pre>``, ``code`` spans, **bold** and links. No external renderer.

The docstrings are reStructuredText-ish plain text with unicode math; this keeps every character
of them (the math stays as written) and only gives the structure a reader needs.
"""

from __future__ import annotations

import html
import inspect
import re
import textwrap

_ITEM = re.compile(r"^(?:([-*])|(\d+)[.)])\s+")
_ROLE = re.compile(r":\w+:`~?([^`]+)`")  # :func:`~a.b` -> ``a.b``
_URL = re.compile(r"https?://[^\s<>\"'`]+")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"``(.+?)``")
_EM = re.compile(r"(?<![\w*])\*(\w[^*]*?\w|\w)\*(?![\w*])")


def inline(text: str) -> str:
    """One paragraph's text as HTML: ``code``, **bold**, :role:`target` and http(s) links."""
    text = _ROLE.sub(r"``\1``", text)
    out = []
    pos = 0
    for m in _CODE.finditer(text):
        out.append(_plain(text[pos : m.start()]))
        out.append(f"<code>{html.escape(m.group(1))}</code>")
        pos = m.end()
    out.append(_plain(text[pos:]))
    return "".join(out)


def _plain(text: str) -> str:
    """Text outside code spans: escaped, bold marked, URLs linked (trailing punctuation kept
    outside the link)."""
    out = []
    pos = 0
    for m in _URL.finditer(text):
        url = m.group(0)
        trail = ""
        while url and url[-1] in ".,;:)]":
            if url[-1] == ")" and url.count("(") >= url.count(")"):
                break
            trail = url[-1] + trail
            url = url[:-1]
        out.append(_bold(text[pos : m.start()]))
        safe = html.escape(url, quote=True)
        out.append(f'<a href="{safe}" rel="noreferrer">{html.escape(url)}</a>{html.escape(trail)}')
        pos = m.end()
    out.append(_bold(text[pos:]))
    return "".join(out)


def _bold(text: str) -> str:
    text = _BOLD.sub(r"<strong>\1</strong>", html.escape(text, quote=False))
    return _EM.sub(r"<em>\1</em>", text)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _content_indent(line: str) -> int:
    """Where the text of ``line`` starts (after a list marker, if it opens an item)."""
    m = _ITEM.match(line.strip())
    return _indent(line) + (m.end() if m else 0)


def _blocks(lines: list[str]) -> list[tuple[str, list[str]]]:
    """``("text", lines)`` runs separated by blank lines and ``("pre", lines)`` literal blocks
    (the indented lines after a paragraph ending in ``::``)."""
    blocks: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        start = i
        while i < len(lines) and lines[i].strip():
            i += 1
        block = lines[start:i]
        literal = block[-1].rstrip().endswith("::")
        if block[0].lstrip().startswith(">>>"):
            blocks.append(("pre", block))
            continue
        blocks.append(("text", block))
        if not literal:
            continue
        base = _content_indent(block[-1])
        j = i
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
            j += 1
        body = lines[i:j]
        while body and not body[-1].strip():
            body.pop()
        while body and not body[0].strip():
            body.pop(0)
        if body:
            blocks.append(("pre", body))
        i = j
    return blocks


def _text_block(lines: list[str]) -> list[tuple[str, str]]:
    """One text block as ``(kind, html)`` parts: ``p`` (with ``indent`` when indented), or
    ``ul``/``ol`` items (``ol`` items carry their number as ``"n|html"``)."""
    base = min(_indent(ln) for ln in lines)
    parts: list[tuple[str, str]] = []
    para: list[str] = []
    item: list[str] = []
    kind, number, para_indent = "", "", 0

    def flush_para() -> None:
        if para:
            tag = "p" if para_indent == 0 else "pi"
            parts.append((tag, inline(_joined(para))))
            para.clear()

    def flush_item() -> None:
        if item:
            body = inline(_joined(item))
            parts.append((kind, f"{number}|{body}" if kind == "ol" else body))
            item.clear()

    for ln in lines:
        m = _ITEM.match(ln.strip())
        if m is not None and _indent(ln) == base:
            flush_para()
            flush_item()
            kind, number = ("ul", "") if m.group(1) else ("ol", m.group(2))
            item.append(ln.strip()[m.end() :])
        elif item:
            item.append(ln.strip())
        else:
            para_indent = para_indent if para else _indent(ln)
            para.append(ln.strip())
    flush_para()
    flush_item()
    return parts


def _joined(lines: list[str]) -> str:
    text = " ".join(lines).strip()
    if text.endswith("::"):  # the marker of the literal block that follows
        text = text[:-2].rstrip()
        text = text + ":" if text and text[-1] not in ".:" else text
    return text


def doc_html(doc: str | None) -> str:
    """A docstring as HTML (``""`` for none); the first line is the summary paragraph."""
    if not doc or not doc.strip():
        return ""
    lines = inspect.cleandoc(doc).splitlines()
    out: list[str] = []
    open_list = ""
    for kind, block in _blocks(lines):
        parts = (
            [("pre", html.escape(textwrap.dedent("\n".join(block))))]
            if kind == "pre"
            else _text_block(block)
        )
        for tag, body in parts:
            if tag in ("ul", "ol"):
                if open_list != tag:
                    if open_list:
                        out.append(f"</{open_list}>")
                    number, _, body = body.partition("|") if tag == "ol" else ("", "", body)
                    start = f' start="{number}"' if tag == "ol" and number not in ("", "1") else ""
                    out.append(f"<{tag}{start}>")
                    open_list = tag
                elif tag == "ol":
                    body = body.partition("|")[2]
                out.append(f"<li>{body}</li>")
                continue
            if open_list:
                out.append(f"</{open_list}>")
                open_list = ""
            if tag == "pre":
                out.append(f"<pre>{body}</pre>")
            elif tag == "pi":
                out.append(f'<p class="indent">{body}</p>')
            else:
                out.append(f"<p>{body}</p>")
    if open_list:
        out.append(f"</{open_list}>")
    return "\n".join(out)


def summary(doc: str | None) -> str:
    """The first sentence-line of a docstring, as plain text (``""`` for none)."""
    if not doc or not doc.strip():
        return ""
    first = inspect.cleandoc(doc).split("\n\n", 1)[0]
    return _ROLE.sub(r"\1", " ".join(first.split())).replace("``", "")
