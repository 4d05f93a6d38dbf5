"""Install attnzoo as a user would, beside a torch that is not the project's pin, and check it.

``make test-install`` (part of ``make test``) runs this:

1. builds the sdist and, from it, the wheel (``python -m build``);
2. makes a clean venv with the oldest supported releases of the core dependencies (torch 2.13.0,
   numpy 1.26.4, einops 0.7.0: the lower bounds in pyproject.toml; torch 2.13.0 is also a
   different release than the project's pin, 2.14.1) and installs the wheel with no extras;
3. checks that installing kept the user's torch, that no optional package came along, that the
   README's Python example runs, that ``import attnzoo`` works, and that the optional parts
   (the command line, the store) say which extra to install;
4. installs the ``[bench,tasks,native,export]`` extras into the same venv and runs the contract
   tests (``tests/contract``) against the installed wheel at those lower bounds.

Usage: ``python tools/check_install.py [--workdir DIR] [--keep]``. Exit code 0 when every check
holds; 1 with the failing step named otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from attnzoo.extras import EXTRAS  # the checkout's venv runs this script

ROOT = Path(__file__).resolve().parent.parent
# the oldest release of each core dependency (its ">=" bound in pyproject.toml, which
# tests/test_packaging.py holds this to), at its newest patch where the bound names none
LOWER = {"torch": "2.13.0", "numpy": "1.26.4", "einops": "0.7.0"}
OPTIONAL = tuple(m for modules in EXTRAS.values() for m in modules)


def pinned(name: str) -> str:
    """``name==version`` as constraints.txt pins it (one place for the project's releases)."""
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.split("#")[0].strip()
    raise CheckFailed(f"constraints.txt pins no {name}")


class CheckFailed(RuntimeError):
    pass


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(cmd: list[str], *, cwd: Path | None = None, ok: tuple[int, ...] = (0,),
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=cwd, text=True, capture_output=True, env=env)
    print(f"  (exit {p.returncode}, {time.monotonic() - t0:.0f} s)", flush=True)
    if p.returncode not in ok:
        tail = "\n".join((p.stdout + p.stderr).splitlines()[-40:])
        raise CheckFailed(f"{' '.join(cmd[:4])} ... exited {p.returncode}:\n{tail}")
    return p


def readme_example() -> str:
    """The first ```python block under the README's "Use it" heading."""
    text = (ROOT / "README.md").read_text()
    part = text.split("## Use it", 1)
    if len(part) != 2:
        raise CheckFailed("README.md has no '## Use it' section")
    m = re.search(r"```python\n(.*?)```", part[1], re.S)
    if m is None:
        raise CheckFailed("README.md's 'Use it' section has no ```python block")
    return m.group(1)


def build(dist: Path) -> Path:
    step("build the sdist and the wheel")
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)])
    wheels = sorted(dist.glob("attnzoo-*.whl"))
    sdists = sorted(dist.glob("attnzoo-*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        raise CheckFailed(f"expected one wheel and one sdist in {dist}, got {wheels + sdists}")
    names = run([sys.executable, "-m", "zipfile", "-l", str(wheels[0])]).stdout
    for needed in ("attnzoo/py.typed", "attnzoo/native/", "attnzoo/_version.py"):
        if needed not in names:
            raise CheckFailed(f"the wheel lacks {needed}")
    return wheels[0]


def clean_venv(where: Path) -> Path:
    step(f"a clean venv with torch {LOWER['torch']} (the user's stack), then the wheel")
    base = shutil.which("python3.11") or shutil.which("python3") or sys.executable
    run([base, "-m", "venv", str(where)])
    py = where / "bin" / "python"
    run([str(py), "-m", "pip", "install", "-q", *(f"{k}=={v}" for k, v in LOWER.items())])
    return py


def check_core(py: Path, wheel: Path, scratch: Path) -> None:
    run([str(py), "-m", "pip", "install", "-q", str(wheel)])
    got = run([str(py), "-c", "import torch, numpy, einops; print(torch.__version__, "
               "numpy.__version__, einops.__version__)"]).stdout.split()  # fmt: skip
    want = [LOWER["torch"], LOWER["numpy"], LOWER["einops"]]
    if [g.split("+")[0] for g in got] != want:
        raise CheckFailed(f"installing the wheel changed the user's stack: {got} != {want}")
    step("no optional package came with it")
    probe = "import importlib.util as u; print(','.join(m for m in %r if u.find_spec(m)))"
    present = run([str(py), "-c", probe % (OPTIONAL,)]).stdout.strip()
    if present:
        raise CheckFailed(f"optional packages were installed with the core: {present}")
    step("the README's Python example, and the version")
    example = scratch / "readme_example.py"
    example.write_text(readme_example())
    run([str(py), str(example)], cwd=scratch)
    version = run([str(py), "-c", "import attnzoo; print(attnzoo.__version__)"], cwd=scratch)
    print(f"  attnzoo {version.stdout.strip()}")
    step("optional parts name their extra")
    cli = run([str(py.parent / "attnzoo"), "list"], cwd=scratch, ok=(1,))
    if "pip install 'attnzoo[bench]'" not in cli.stderr:
        raise CheckFailed(f"`attnzoo list` without [bench] said: {cli.stderr!r}")
    store = run([str(py), "-c", "import attnzoo.store"], cwd=scratch, ok=(1,))
    if "pip install 'attnzoo[bench]'" not in store.stderr:
        raise CheckFailed(f"`import attnzoo.store` without [bench] said: {store.stderr[-300:]!r}")


def contract_tests(py: Path, wheel: Path) -> None:
    step(f"the contract tests at the lower bounds ({LOWER})")
    run([str(py), "-m", "pip", "install", "-q", f"{wheel}[bench,tasks,native,export]",
         pinned("pytest"), *(f"{k}=={v}" for k, v in LOWER.items())])  # fmt: skip
    env = {**os.environ, "PYTHONPATH": ""}
    p = run([str(py), "-m", "pytest", "tests/contract", "-q", "-p", "no:cacheprovider",
             "-m", "not compile"], cwd=ROOT, env=env, ok=(0, 1, 2, 3, 4, 5))  # fmt: skip
    print("\n".join(p.stdout.splitlines()[-5:]))
    if p.returncode != 0:
        raise CheckFailed(f"contract tests failed at the lower bounds:\n{p.stdout[-4000:]}")
    where = run([str(py), "-c", "import attnzoo; print(attnzoo.__file__)"], cwd=ROOT).stdout
    if str(ROOT / "src") in where:
        raise CheckFailed(f"the tests imported the checkout, not the wheel: {where}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=None, help="where to build (default: a temp)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="attnzoo-install-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        wheel = build(work / "dist")
        py = clean_venv(work / "venv")
        scratch = work / "scratch"
        scratch.mkdir(exist_ok=True)
        check_core(py, wheel, scratch)
        contract_tests(py, wheel)
    except CheckFailed as e:
        print(f"\ninstall check FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\ninstall check passed in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
