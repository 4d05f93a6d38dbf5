"""attnzoo's optional parts and the packages each needs (the ``[extras]`` of its pyproject).

``pip install attnzoo`` brings the mechanisms alone (torch, einops, numpy). The rest is opt-in:

========== ======================================================== ===============================
extra      what it adds                                             imports
========== ======================================================== ===============================
bench      the benches' DuckDB store, the ``attnzoo`` command line, duckdb, typer, rich, matplotlib
           the HTML report and its plots
tasks      the quality tasks' real data (digits ship in sklearn)    sklearn
native     building the native CPU kernels                          ninja
hf         :mod:`attnzoo.hf` (Hugging Face transformers)            transformers
export     ONNX export and onnxruntime                              onnx, onnxscript, onnxruntime
ray        ``bench quality --executor ray``                         ray
peers      the peer implementations the benches compare against     timm, fla, x_transformers
========== ======================================================== ===============================

:func:`require` is called where an optional part starts (a module's import, a command, a
task's data), so a missing package is reported as the one ``pip install`` that brings it, never
as a ``ModuleNotFoundError`` from deep inside.
"""

from __future__ import annotations

import importlib.util

EXTRAS: dict[str, tuple[str, ...]] = {
    "bench": ("duckdb", "typer", "rich", "matplotlib"),
    "tasks": ("sklearn",),
    "native": ("ninja",),
    "hf": ("transformers",),
    "export": ("onnx", "onnxscript", "onnxruntime"),
    "ray": ("ray",),
    "peers": ("timm", "fla", "x_transformers"),
}


class MissingExtra(ImportError):
    """An optional part was used without the packages of its extra. The message is the fix."""

    def __init__(self, extra: str, what: str, missing: list[str]) -> None:
        self.extra = extra
        self.missing = missing
        super().__init__(
            f"{what} needs attnzoo's [{extra}] extra ({', '.join(missing)} not installed): "
            f"pip install 'attnzoo[{extra}]'"
        )


def missing(extra: str, modules: tuple[str, ...] | None = None) -> list[str]:
    """The modules of ``extra`` (or just ``modules`` of it) that cannot be imported here."""
    if extra not in EXTRAS:
        raise ValueError(f"extra must be one of {', '.join(EXTRAS)}, got {extra!r}")
    names = EXTRAS[extra] if modules is None else modules
    return [m for m in names if importlib.util.find_spec(m) is None]


def require(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise :class:`MissingExtra` naming ``what`` and the install command when a module of
    ``extra`` (or only those in ``modules``) is not installed."""
    gone = missing(extra, modules)
    if gone:
        raise MissingExtra(extra, what, gone)


def available(extra: str) -> bool:
    """Whether every package of ``extra`` is installed."""
    return not missing(extra)
