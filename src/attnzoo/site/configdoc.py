"""A mechanism's config on its page: every field (type, default, declared limits, description
from :meth:`attnzoo.config.MixerConfig.describe`) and the checks relating fields that the
``validate()`` methods along the config's class hierarchy make, read from their source.

A check is shown as the message it raises, with each interpolated expression kept as
``{expression}`` (e.g. ``d_model={self.d_model} is not divisible by num_heads={self.heads}``):
that is what a user who breaks it reads, without running anything.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap

from attnzoo.report.common import esc, table, td

OWNER_PREFIXES = ("{owner}: ", "{self._owner()}: ", "{self.mixer_name}: ")


@dataclasses.dataclass(frozen=True)
class Check:
    """One error a ``validate()`` raises: where it is declared and its message template."""

    where: str
    message: str


def config_table(config: type, table_id: str) -> str:
    """Every config field: name, type, default, limits and description (one row each)."""
    rows = [
        [f'<td><code id="cfg-{esc(f.name)}">{esc(f.name)}</code></td>',
         f"<td><code>{esc(f.type)}</code></td>", f"<td><code>{esc(f.default)}</code></td>",
         td(f.limits or "—", "" if f.limits else "na"), td(f.description or "(undocumented)")]
        for f in config.describe()
    ]  # fmt: skip
    return table(["key", "type", "default", "limits", "description"], rows, table_id)


def validate_checks(config: type) -> list[Check]:
    """The messages of the ``ValueError``/``TypeError`` raised by every ``validate`` defined
    along ``config``'s MRO, base classes first (the order they run in); ``[]`` when a source
    cannot be read (a class defined in an interactive session)."""
    out: list[Check] = []
    for klass in reversed(config.__mro__):
        fn = vars(klass).get("validate")
        if fn is None:
            continue
        try:
            src = textwrap.dedent(inspect.getsource(fn))
        except (OSError, TypeError):
            continue
        where = f"{klass.__module__}.{klass.__qualname__}.validate"
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
                text = _template(node.exc.args[0])
                if text:
                    out.append(Check(where, text))
    return out


def _template(node: ast.expr) -> str:
    """A message expression as text: literals as written, interpolations as ``{expr}``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        text = node.value
    elif isinstance(node, ast.JoinedStr):
        parts = []
        for v in node.values:
            if isinstance(v, ast.Constant):
                parts.append(str(v.value))
            elif isinstance(v, ast.FormattedValue):
                parts.append("{" + ast.unparse(v.value) + "}")
        text = "".join(parts)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        text = _template(node.left) + _template(node.right)
    else:
        text = "{" + ast.unparse(node) + "}"
    for prefix in OWNER_PREFIXES:
        text = text.removeprefix(prefix)
    return text.replace("{self._owner()}", "{owner}").replace("{self.", "{")


def _short(where: str) -> str:
    """``Class.validate`` of ``package.module.Class.validate``."""
    return ".".join(where.split(".")[-2:])


def checks_html(config: type) -> str:
    """The cross-field checks as a list (or a line saying there are none beyond the limits)."""
    checks = validate_checks(config)
    if not checks:
        return (
            '<p class="muted">No checks relating fields beyond each field\'s type and limits.</p>'
        )
    items = "".join(
        f'<li><code>{esc(c.message)}</code> <span class="muted" title="{esc(c.where)}">'
        f"({esc(_short(c.where))})</span></li>"
        for c in checks
    )
    return (
        '<p class="muted">Checks relating fields, run when the config is built (after the type '
        "and limit checks); each is shown as the error it raises, <code>{…}</code> standing for "
        f'the values of the call:</p><ul class="checks">{items}</ul>'
    )
