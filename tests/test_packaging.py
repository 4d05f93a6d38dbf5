"""attnzoo as a dependency of someone else's project: the core needs torch, einops and numpy only;
each optional part names the extra that brings it; one version; the pins sit inside the ranges.

The full check (a wheel in a clean venv beside another torch) is ``make test-install``
(``tools/check_install.py``); these tests are its fast in-process half."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

import attnzoo
from attnzoo.extras import EXTRAS, MissingExtra, missing, require

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
OPTIONAL = sorted({m for mods in EXTRAS.values() for m in mods} | {"scipy", "joblib", "packaging"})


def without(code: str, blocked: list[str] = OPTIONAL) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter in which ``blocked`` cannot be imported (as if not
    installed: ``sys.modules[name] = None`` makes both ``import`` and ``find_spec`` miss it)."""
    prelude = f"import sys\nfor m in {blocked!r}: sys.modules[m] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], text=True,
                          capture_output=True, timeout=120)  # fmt: skip


def test_core_imports_and_runs_without_any_optional_package() -> None:
    p = without(
        "import torch, attnzoo as az\n"
        "m = az.build_mixer('gla', d_model=16, num_heads=2, causal=True, impl='chunk')\n"
        "y = m(torch.randn(1, 8, 16)); y.sum().backward()\n"
        "assert len(az.list_mixers()) >= 20\n"
        f"bad = sorted(n for n in {OPTIONAL!r} if sys.modules.get(n) is not None)\n"
        "assert not bad, bad\n"
        "print('ok', az.__version__)"
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"ok {attnzoo.__version__}"


@pytest.mark.parametrize(
    ("code", "extra"),
    [
        ("import attnzoo.store", "bench"),
        ("import attnzoo.report", "bench"),
        ("from attnzoo.tasks.digits import _raw; _raw()", "tasks"),
    ],
)
def test_an_optional_part_names_its_extra(code: str, extra: str) -> None:
    p = without(code)
    assert p.returncode == 1
    assert f"pip install 'attnzoo[{extra}]'" in p.stderr.strip().splitlines()[-1], p.stderr


def test_the_command_line_without_bench_says_what_to_install() -> None:
    p = without("from attnzoo.entry import main; main()", ["typer", "duckdb"])
    assert p.returncode == 1
    (line,) = p.stderr.strip().splitlines()
    assert line == (
        "error: the attnzoo command line needs attnzoo's [bench] extra (duckdb, typer not "
        "installed): pip install 'attnzoo[bench]'"
    )


def test_native_kernels_without_ninja_name_the_extra() -> None:
    p = without(
        "import os, shutil\n"
        "shutil.which = lambda *a, **k: None\n"
        "from attnzoo import native\n"
        "print(native.available(), native.unavailable_reason())",
        ["ninja"],
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("False ") and "pip install 'attnzoo[native]'" in p.stdout


def test_require_and_missing() -> None:
    assert missing("bench") == []
    with pytest.raises(MissingExtra, match=r"the x needs attnzoo's \[ray\] extra \(no_such"):
        require("ray", "the x", ("no_such_module_here",))
    with pytest.raises(ValueError, match="extra must be one of bench"):
        missing("gpu")


def test_one_version() -> None:
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert "version" not in PYPROJECT["project"]
    assert importlib.metadata.version("attnzoo") == attnzoo.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", attnzoo.__version__)


def test_typed_marker_ships() -> None:
    assert (Path(attnzoo.__file__).parent / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["attnzoo"]


def test_core_dependencies_are_ranges_of_torch_einops_numpy() -> None:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    assert sorted(r.name for r in reqs) == ["einops", "numpy", "torch"]
    for r in reqs:
        ops = {s.operator for s in r.specifier}
        assert ">=" in ops and "==" not in ops, f"{r} must be a range"


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            out[name.lower().replace("_", "-")] = version
    return out


def test_constraints_pin_a_point_inside_every_range() -> None:
    pinned = pins()
    groups = {"core": PYPROJECT["project"]["dependencies"],
              **PYPROJECT["project"]["optional-dependencies"]}  # fmt: skip
    for group, reqs in groups.items():
        for text in reqs:
            r = Requirement(text)
            if r.name == "attnzoo":
                assert set(r.extras) <= set(groups), text
                continue
            name = r.name.lower().replace("_", "-")
            assert name in pinned, f"[{group}] {r.name} has no pin in constraints.txt"
            assert r.specifier.contains(pinned[name]), f"[{group}] {text} vs pin {pinned[name]}"


def test_every_extra_is_in_all() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    (everything,) = extras["all"]
    named = set(Requirement(everything).extras)
    assert named == set(extras) - {"all", "test"}
    assert set(EXTRAS) <= set(extras)


def test_the_install_check_installs_the_lower_bounds() -> None:
    """``tools/check_install.py`` tests the oldest releases pyproject.toml admits."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_install", ROOT / "tools/check_install.py")
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for text in PYPROJECT["project"]["dependencies"]:
        r = Requirement(text)
        (bound,) = [s.version for s in r.specifier if s.operator == ">="]
        version = tool.LOWER[r.name]
        assert r.specifier.contains(version) and version.startswith(bound), (text, version)
    assert tool.pinned("pytest") == f"pytest=={pins()['pytest']}"
