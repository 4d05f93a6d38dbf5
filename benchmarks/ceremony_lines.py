"""Ceremony lines per block file: code lines that are not the mechanism's math.

    python benchmarks/ceremony_lines.py src/attnzoo/mixers/seq/*.py src/attnzoo/mixers/vision/*.py

Counts code lines only (no docstrings, comments or blank lines). Ceremony:

- import statements;
- the ``@register_mixer(...)`` decorator;
- ``validate()`` bodies (hand-written config checks) and ``_check_streamable`` definitions;
- calls of the base-class checks (``pattern_of``, ``check_input``, ``check_mask``,
  ``check_step``, ``state_options``, ``check_heads``, ``_check_streamable``);
- ``forward()`` signatures (a block restating the interface).

Registrations of what describes a block (peer cases, context-parallel strategies) are counted
apart: Interface v2 moved them from central lists into the block files.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

CHECKS = {"pattern_of", "check_input", "check_mask", "check_step", "state_options",
          "_check_streamable", "check_heads"}  # fmt: skip
REGISTERS = {"register_case", "register_impl_cases", "register_strategy"}


def code_lines(src: str) -> tuple[set[int], ast.Module]:
    tree = ast.parse(src)
    doc: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                if isinstance(first.value.value, str):
                    doc.update(range(first.lineno, first.end_lineno + 1))
    lines: set[int] = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER}  # fmt: skip
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type not in skip:
            lines.update(n for n in range(tok.start[0], tok.end[0] + 1) if n not in doc)
    return lines, tree


def _span(node: ast.AST) -> range:
    return range(node.lineno, node.end_lineno + 1)


def count(path: Path) -> tuple[int, int, int, int]:
    """(total lines, code lines, ceremony lines, registration lines)."""
    src = path.read_text()
    code, tree = code_lines(src)
    ceremony: set[int] = set()
    registrations: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            ceremony.update(_span(node))
        elif isinstance(node, ast.ClassDef):
            for d in node.decorator_list:
                if isinstance(d, ast.Call) and getattr(d.func, "id", "") == "register_mixer":
                    ceremony.update(range(d.lineno - 1, d.end_lineno + 1))
        elif isinstance(node, ast.FunctionDef):
            if node.name in ("validate", "_check_streamable"):
                ceremony.update(_span(node))
            if node.name == "forward":
                ceremony.update(range(node.lineno, node.body[0].lineno))
        elif isinstance(node, (ast.Expr, ast.Assign)) and isinstance(node.value, ast.Call):
            f = node.value.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in CHECKS:
                ceremony.update(_span(node))
            elif name in REGISTERS:
                registrations.update(_span(node))
    return len(src.splitlines()), len(code), len(ceremony & code), len(registrations & code)


def main(paths: list[str]) -> None:
    totals = [0, 0, 0, 0]
    for p in paths:
        row = count(Path(p))
        totals = [a + b for a, b in zip(totals, row, strict=True)]
        print(f"{Path(p).name:18s} total {row[0]:4d}  code {row[1]:4d}  ceremony {row[2]:4d} "
              f"({100 * row[2] / max(row[1], 1):3.0f}%)  registrations {row[3]:3d}")  # fmt: skip
    print(f"{'ALL':18s} total {totals[0]:4d}  code {totals[1]:4d}  ceremony {totals[2]:4d} "
          f"({100 * totals[2] / max(totals[1], 1):3.0f}%)  registrations {totals[3]:3d}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
