"""The exponent of the token count in a mechanism's declared complexity (``MixerSpec.complexity``).

Complexities are words, e.g. ``"O(T·S·K) time; O(T·S) or O(T·block) memory"`` or
``"O((h·w)²·C) time; O(H·(h·w)²) memory for the positional attention"``. Each ``O(...)`` is read
as a polynomial: its degree in the token count is the prediction's model of how a call's cost
grows with T (the speed runner measures self patterns, and cross patterns with a context as
long as ``x``, so ``S`` grows like ``T``).

- tokens: ``T``, ``S`` and ``N`` count 1; on a grid layout each token axis counts
  ``1 / rank`` (``h·w`` is 1 on ``grid2d``, ``d·h·w`` is 1 on ``grid3d``), primed names
  (``h'·w'``, a context's) alike; every other name
  (``K``, ``C``, ``block``, window side ``s``) is a constant. Names are case-sensitive: ``S``
  is the context, ``s`` a window side.
- ``a·b`` and juxtaposition add degrees, ``a/b`` subtracts, ``a + b`` takes the larger, a power
  (``²``, ``^3``) multiplies, ``log x`` counts 0.
- which ``O(...)`` is time and which memory: the first of the words *time*/*work*
  (time), *memory*/*scores* (memory) or *state* (ignored: a forward call's peak is not its
  streaming state) between it and the next ``O(``; with none of them the expression is time,
  except one joined to the next by a bare ``or``/``and``/``+``/``,``, which takes the next one's
  kind (``O(T·S) or O(T·block) memory``: both memory). Time is the largest degree among time
  expressions; memory the largest among memory expressions, or time's if none is declared (a
  working set cannot outgrow the work that writes it).
- anything that does not parse reads as :data:`UNKNOWN_EXPONENT` (quadratic): the cautious
  default, since nothing registered grows faster than quadratically in T except through a
  parameter, and over-predicting only costs a skipped measurement, never a machine that swaps.
"""

from __future__ import annotations

import re

UNKNOWN_EXPONENT = 2.0
_KEYWORDS = re.compile(r"\b(time|work|memory|scores|state)\b", re.IGNORECASE)
_KIND = {"time": "time", "work": "time", "memory": "memory", "scores": "memory", "state": "state"}
_CONNECTORS = ("", "or", "and", "+", ",")
_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<sup>[⁰¹²³⁴⁵⁶⁷⁸⁹]+)|(?P<name>[A-Za-z][A-Za-z0-9_]*'*)"
    r"|(?P<op>[-+()·⋅*×/^]))"
)
_MUL = ("·", "⋅", "*", "×")


def token_weights(layout_axes: tuple[str, ...]) -> dict[str, float]:
    """How much each name counts towards the token count for a layout with these token axes."""
    weights = {"T": 1.0, "S": 1.0, "N": 1.0}
    if len(layout_axes) > 1:
        weights.update({axis: 1.0 / len(layout_axes) for axis in layout_axes})
    # a primed name is the context's (``h'·w'``), as long as ``x`` in the speed runner
    weights.update({name + "'": w for name, w in list(weights.items())})
    return weights


def o_terms(complexity: str) -> list[tuple[str, str]]:
    """The ``(inside, kind)`` of every ``O(...)`` in ``complexity``, kind ``time``, ``memory`` or
    ``state`` (see the module docstring); an unclosed ``O(`` is ``(text to the end, "time")``."""
    spans: list[tuple[int, int, int]] = []  # (start of "O(", end of inside, end of ")")
    for m in re.finditer(r"(?<![A-Za-z])O\(", complexity):
        if spans and m.start() < spans[-1][2]:
            continue  # an O( inside the previous one
        depth, i = 1, m.end()
        while i < len(complexity) and depth:
            depth += {"(": 1, ")": -1}.get(complexity[i], 0)
            i += 1
        spans.append((m.start(), i - 1 if depth == 0 else i, i))
    out: list[tuple[str, str]] = []
    kinds: list[str | None] = []
    for j, (start, inner_end, end) in enumerate(spans):
        nxt = spans[j + 1][0] if j + 1 < len(spans) else len(complexity)
        trailing = complexity[end:nxt]
        word = _KEYWORDS.search(trailing)
        if word:
            kinds.append(_KIND[word.group(1).lower()])
        elif trailing.strip().lower() in _CONNECTORS and j + 1 < len(spans):
            kinds.append(None)  # the next expression's kind
        else:
            kinds.append("time")
        out.append((complexity[start + 2 : inner_end], ""))
    kind = "time"
    for j in range(len(out) - 1, -1, -1):
        kind = kinds[j] or kind
        out[j] = (out[j][0], kind)
    return out


def degree(expr: str, weights: dict[str, float]) -> float:
    """The degree in the token count of one ``O(...)``'s inside; ``ValueError`` naming the
    expression when it does not parse."""
    return _Parser(expr, weights).parse()


def exponents(complexity: str, layout_axes: tuple[str, ...] = ("T",)) -> tuple[float | None, float | None]:  # fmt: skip
    """``(time, memory)`` exponents of T declared by ``complexity`` (``None``: not declared;
    an expression that does not parse counts :data:`UNKNOWN_EXPONENT`)."""
    weights = token_weights(layout_axes)
    found: dict[str, list[float]] = {"time": [], "memory": [], "state": []}
    for inner, kind in o_terms(complexity):
        try:
            found[kind].append(degree(inner, weights))
        except ValueError:
            found[kind].append(UNKNOWN_EXPONENT)
    time = max(found["time"], default=None)
    memory = max(found["memory"], default=None)
    return time, memory


class _Parser:
    """Recursive descent over ``expr := term (('+'|'-') term)*``,
    ``term := power ((mul | '/' | juxtaposition) power)*``, ``power := atom (sup | '^' num)?``,
    ``atom := num | name | 'log' power | '(' expr ')'``; values are degrees."""

    def __init__(self, text: str, weights: dict[str, float]) -> None:
        self.text, self.weights = text, weights
        self.tokens: list[tuple[str, str]] = []
        pos, rest = 0, text.rstrip()
        while pos < len(rest):
            m = _TOKEN.match(rest, pos)
            if m is None or m.end() == pos:
                raise ValueError(f"complexity {text!r}: cannot read {rest[pos:]!r}")
            kind = m.lastgroup or "op"
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _next(self) -> tuple[str, str]:
        tok = self._peek()
        if tok is None:
            raise ValueError(f"complexity {self.text!r}: ends where an operand is expected")
        self.i += 1
        return tok

    def parse(self) -> float:
        d = self._expr()
        if self._peek() is not None:
            raise ValueError(f"complexity {self.text!r}: unexpected {self._peek()[1]!r}")
        return d

    def _expr(self) -> float:
        d = self._term()
        while self._peek() in (("op", "+"), ("op", "-")):
            self._next()
            d = max(d, self._term())
        return d

    def _term(self) -> float:
        d = self._power()
        while (tok := self._peek()) is not None:
            if tok[0] == "op" and tok[1] in _MUL:
                self._next()
                d += self._power()
            elif tok == ("op", "/"):
                self._next()
                d -= self._power()
            elif tok[0] in ("num", "name") or tok == ("op", "("):
                d += self._power()  # juxtaposition: "T log T"
            else:
                break
        return d

    def _power(self) -> float:
        d = self._atom()
        tok = self._peek()
        if tok is not None and tok[0] == "sup":
            self._next()
            return d * int(tok[1].translate(_SUPERSCRIPTS))
        if tok == ("op", "^"):
            self._next()
            kind, value = self._next()
            if kind != "num":
                raise ValueError(f"complexity {self.text!r}: '^' needs a number, got {value!r}")
            return d * float(value)
        return d

    def _atom(self) -> float:
        kind, value = self._next()
        if kind == "num":
            return 0.0
        if kind == "name":
            if value == "log":
                self._power()  # log of anything grows slower than any power
                return 0.0
            return self.weights.get(value, 0.0)
        if value == "(":
            d = self._expr()
            if self._peek() != ("op", ")"):
                raise ValueError(f"complexity {self.text!r}: unbalanced parentheses")
            self._next()
            return d
        raise ValueError(f"complexity {self.text!r}: unexpected {value!r}")
