"""The package's structure stays as DESIGN §2 and Interface v2 say.

- **No central lists.** Outside a mechanism's own files (its block module and the op modules
  that block imports), the library names a mechanism only in a registration (a call of a
  ``register_*`` function) or a suite definition (``SUITES`` and the ``*Suite`` classes, which
  pick mechanisms on purpose). So adding a mechanism edits no list elsewhere.
- **Layers, strictly downward**: no import cycles; ``ops`` imports nothing from the package;
  ``mixers/vision`` does not import ``mixers/seq``; ``bench`` defines no models (no
  ``nn.Module`` subclasses); ``cli`` uses the report's public API only; the report and the
  store never import torch.

Nothing here runs a block: it reads the source with ``ast``.
"""

from __future__ import annotations

import ast
import importlib.util
from collections import defaultdict
from pathlib import Path

import pytest

import attnzoo as az

SRC = Path(az.__file__).resolve().parent
MODULES = sorted(SRC.rglob("*.py"))

# literals that equal a mechanism's name but mean something else there
NOT_A_MECHANISM = {
    ("spec.py", "softmax"): "the family of exact softmax attention",
    ("spec.py", "linear"): "the family of linear attention",
    ("distributed/state_passing.py", "linear"): "the op kind (attnzoo.ops.linear)",
    ("distributed/strategies.py", "linear"): "the op kind of state passing",
    ("report/plots.py", "linear"): "matplotlib's axis scale",
    ("report/quality_rows.py", "linear"): "matplotlib's axis scale",
    ("tasks/regression.py", "linear"): "the regression task's stationary-map mode",
    ("distributed/state_passing.py", "lightning"): "the first version's kind name, in the "
    "message naming what replaced it",
    ("distributed/state_passing.py", "gla"): "the first version's kind name, in the message "
    "naming what replaced it",
    ("mixers/seq/combiner.py", "axial"): "Combiner's variant (Combiner-Axial), not the axial block",
    ("ops/combiner.py", "axial"): "Combiner's variant (Combiner-Axial), not the axial block",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


NAMES = {_module_name(p) for p in MODULES}


def _rel(path: Path) -> str:
    return path.relative_to(SRC).as_posix()


def _imports(path: Path) -> set[str]:
    """The ``attnzoo`` modules ``path`` imports (at any depth of its code)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("attnzoo")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("attnzoo"):
            out.add(node.module)
            for a in node.names:  # `from attnzoo.ops import window`: a module too
                if f"{node.module}.{a.name}" in NAMES:
                    out.add(f"{node.module}.{a.name}")
    return out


def _path_of(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec is not None and spec.origin else None


def _own_files(spec: az.MixerSpec) -> set[str]:
    """A mechanism's block module and the op modules the block imports."""
    block = _path_of(spec.cls.__module__)
    assert block is not None
    own = {_rel(block)}
    for module in _imports(block):
        if module.startswith("attnzoo.ops."):
            path = _path_of(module)
            if path is not None:
                own.add(_rel(path))
    return own


def _allowed_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside registrations and suite definitions."""
    allowed: set[int] = set()

    def mark(node: ast.AST) -> None:
        allowed.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = (
                f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            )
            if name.startswith("register") or name.endswith("Suite"):
                mark(node)
        elif isinstance(node, ast.ClassDef) and node.name.endswith("Suite"):
            mark(node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "SUITES" for t in targets):
                mark(node)
    return allowed


def name_uses() -> list[tuple[str, int, str]]:
    """``(file, line, mechanism)`` for every string literal naming a mechanism outside its own
    files, registrations and suite definitions."""
    specs = az.list_mixers()
    owners: dict[str, set[str]] = defaultdict(set)
    for spec in specs:
        for f in _own_files(spec):
            owners[spec.name].add(f)
    names = {s.name for s in specs}
    found = []
    for path in MODULES:
        rel = _rel(path)
        tree = ast.parse(path.read_text())
        allowed = _allowed_nodes(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            name = node.value
            if name not in names or rel in owners[name] or id(node) in allowed:
                continue
            if (rel, name) in NOT_A_MECHANISM:
                continue
            found.append((rel, node.lineno, name))
    return found


def test_no_module_names_a_mechanism_outside_its_files() -> None:
    found = name_uses()
    assert not found, "mechanisms named outside their own files (register or suite them):\n" + (
        "\n".join(f"  src/attnzoo/{f}:{line}: {name!r}" for f, line, name in found)
    )


def test_the_check_sees_a_central_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module that lists mechanisms by name outside a registration is caught."""
    bad = SRC / "bench" / "_central_list_probe.py"
    name = az.list_mixers()[0].name
    bad.write_text(f'KNOWN = ("{name}",)\n\n\ndef f(x: str) -> bool:\n    return x == "{name}"\n')
    try:
        monkeypatch.setattr(__import__(__name__), "MODULES", [*MODULES, bad], raising=False)
        globals()["MODULES"].append(bad)
        found = [(f, n) for f, _, n in name_uses() if f.endswith("_central_list_probe.py")]
        assert found == [("bench/_central_list_probe.py", name)] * 2
    finally:
        globals()["MODULES"].remove(bad)
        bad.unlink()


def test_not_a_mechanism_entries_are_still_needed() -> None:
    """Every exception above still matches a literal (a stale one would hide a real name)."""
    for (rel, name), why in NOT_A_MECHANISM.items():
        tree = ast.parse((SRC / rel).read_text())
        assert any(isinstance(n, ast.Constant) and n.value == name for n in ast.walk(tree)), (
            f"{rel} no longer uses {name!r} ({why}): remove the exception"
        )


# ---- layering ------------------------------------------------------------------------------
GRAPH = {_module_name(p): {m for m in _imports(p) if m != _module_name(p)} for p in MODULES}


def _cycles() -> list[list[str]]:
    """Import cycles between modules (module-level and function-level imports alike), ignoring
    a package importing its own submodules (``attnzoo/__init__`` re-exports)."""
    modules = set(GRAPH)

    def edges(m: str) -> set[str]:
        out = set()
        for t in GRAPH[m]:
            if t not in modules or t.startswith(m + "."):
                continue
            out.add(t)
        return out

    cycles, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges(m)):
            if state.get(t) == 1:
                cycle = stack[stack.index(t) :]
                if not all(
                    c.split(".")[:2] == cycle[0].split(".")[:2] and c.endswith("__init__")
                    for c in cycle
                ):
                    cycles.append(cycle + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m)
    # a package __init__ importing its children and a child importing a sibling through the
    # package is the usual re-export, not a cycle between two modules of the layers
    return [c for c in cycles if not any(x.count(".") < 2 for x in c)]


def test_no_import_cycles() -> None:
    cycles = _cycles()
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _imports_of(prefix: str) -> dict[str, set[str]]:
    return {m: deps for m, deps in GRAPH.items() if m == prefix or m.startswith(prefix + ".")}


def test_ops_import_nothing_from_the_package() -> None:
    for m, deps in _imports_of("attnzoo.ops").items():
        bad = {d for d in deps if not d.startswith("attnzoo.ops")} - {
            "attnzoo.native",
            "attnzoo.text",
        }
        assert not bad, (
            f"{m} imports {sorted(bad)}: ops import only ops, the native kernels and the leaf "
            "attnzoo.text (messages)"
        )


def test_vision_blocks_do_not_import_sequence_blocks() -> None:
    for m, deps in _imports_of("attnzoo.mixers.vision").items():
        bad = {d for d in deps if d.startswith("attnzoo.mixers.seq")}
        assert not bad, f"{m} imports {sorted(bad)}"


def test_bench_defines_no_models() -> None:
    for path in (SRC / "bench").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b) for b in node.bases}
                assert not bases & {"nn.Module", "torch.nn.Module", "Module"}, (
                    f"bench/{path.name} defines the model {node.name}: models live in "
                    "attnzoo.models or next to their task"
                )


def test_cli_uses_the_report_public_api_only() -> None:
    deps = GRAPH["attnzoo.cli"]
    inner = {d for d in deps if d.startswith("attnzoo.report.")}
    assert not inner, f"cli imports report internals {sorted(inner)}; use attnzoo.report"


def _module_level(tree: ast.Module) -> list[ast.AST]:
    """The statements that run on import (not function bodies, not ``if TYPE_CHECKING:``)."""
    out = []
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.ClassDef):
            out += [
                n for n in node.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            ]
            continue
        out.append(node)
    return out


def test_report_and_store_never_import_torch() -> None:
    """The report and the store never import torch; the spec (layouts, roles, patterns) imports
    it only inside the functions that make tensors."""
    spec = SRC / "spec.py"
    for path in [*(SRC / "report").glob("*.py"), *(SRC / "store").glob("*.py"), spec]:
        tree = ast.parse(path.read_text())
        nodes = (
            [n for top in _module_level(tree) for n in ast.walk(top)]
            if path == spec
            else ast.walk(tree)
        )
        for node in nodes:
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for n in names:
                assert not n.startswith("torch"), f"{_rel(path)} imports {n}"
                assert not n.startswith(
                    ("attnzoo.ops", "attnzoo.mixers", "attnzoo.bench", "attnzoo.registry")
                ), f"{_rel(path)} imports {n}: the report reads the store only"
