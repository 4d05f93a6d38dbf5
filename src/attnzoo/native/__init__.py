"""attnzoo's native CPU kernels: C++ sources compiled on first use with torch's JIT extension loader.

The kernels call the BLAS that torch itself links (MKL on x86-64 wheels) and run their (batch,
head) pairs in parallel on torch's OpenMP threads. They are built once per source version into
torch's extension cache (``~/.cache/torch_extensions``, or ``$TORCH_EXTENSIONS_DIR``), named by a
digest of the sources; the first build takes about 40 s and needs a C++ compiler (``g++``) and
``ninja`` (the ``[native]`` extra: ``pip install 'attnzoo[native]'``).

- :func:`load` returns the compiled module or raises :class:`NativeUnavailable` with the reason
  (the compiler's output included).
- :func:`available` says whether :func:`load` works here, building on the first call.
- For the ops: :func:`check_inputs` refuses what ``impl="native"`` cannot take (naming it),
  :func:`use_for_auto` decides ``impl="auto"`` (native for CPU float32/float64 inputs when it
  builds; when it does not, it warns once with the reason), :func:`rows` prepares an input.

Under ``torch.export`` (and so ``torch.onnx.export(..., dynamo=True)``), ``impl="auto"`` takes the
portable ``chunk`` path instead (:func:`use_for_auto` is false while
``torch.compiler.is_exporting()``): the exported program is plain ATen, runs without these
kernels and converts to ONNX; its ``T`` is static (the chunk path loops over chunks in Python).
An explicit ``impl="native"`` exports as the custom ops ``attnzoo::linear_chunk`` /
``attnzoo::gla_chunk`` (their ``register_fake`` gives the output shapes, so ``T`` may be dynamic);
such a program needs ``attnzoo`` imported (and the kernels built) to run, and has no ONNX
translation. ``torch.compile`` (not exporting) keeps the native kernels for ``auto``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from attnzoo.extras import MissingExtra

SOURCES = ("bindings.cpp", "linear_chunk.cpp", "gla_chunk.cpp", "gla_grad.cpp")
HEADERS = ("kernels.h", "gla.h")
NAME = "attnzoo_native"
DTYPES = (torch.float32, torch.float64)
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
_STATE: dict[str, object] = {}


class NativeUnavailable(RuntimeError):
    """The native kernels could not be built or loaded on this machine (the message says why)."""


def load() -> ModuleType:
    """The compiled native module (built on first use; cached on disk and in this process)."""
    if "module" in _STATE:
        return _STATE["module"]  # type: ignore[return-value]
    if "error" in _STATE:
        raise NativeUnavailable(str(_STATE["error"]))
    try:
        module = _build()
    except Exception as exc:  # the compiler, ninja or the loader failed: keep the reason
        _STATE["error"] = f"attnzoo's native CPU kernels could not be built: {exc}"
        raise NativeUnavailable(str(_STATE["error"])) from exc
    _STATE["module"] = module
    return module


def available() -> bool:
    """Whether the native kernels load here (builds them on the first call)."""
    try:
        load()
    except NativeUnavailable:
        return False
    return True


def unavailable_reason() -> str | None:
    """Why :func:`available` is false (``None`` if they loaded or were never tried)."""
    error = _STATE.get("error")
    return None if error is None else str(error)


def check_inputs(op: str, x: Tensor) -> None:
    """Refuse inputs the kernels do not take, naming the value and the alternative."""
    if x.device.type != "cpu":
        raise ValueError(
            f"{op}: impl='native' runs on the CPU, got tensors on {x.device}; use impl='chunk'"
        )
    if x.dtype not in DTYPES:
        raise TypeError(
            f"{op}: impl='native' takes float32 or float64, got {x.dtype}; use impl='chunk'"
        )


def use_for_auto(op: str, x: Tensor) -> bool:
    """Whether ``impl="auto"`` of ``op`` runs natively on inputs like ``x``: CPU, float32 or
    float64, and the kernels build here. When they do not, warn once per op (with the reason).
    False under ``torch.export``: exported programs take the portable path (module docstring)."""
    if torch.compiler.is_exporting() or x.device.type != "cpu" or x.dtype not in DTYPES:
        return False
    if available():
        return True
    key = f"warned:{op}"
    if key not in _STATE:
        _STATE[key] = True
        warnings.warn(
            f"{op}: impl='auto' uses the portable 'chunk' path because {unavailable_reason()}",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


def rows(x: Tensor) -> Tensor:
    """The kernels read ``[B, T, H, D]`` through strides; they need unit-stride, non-overlapping
    rows (an expanded GQA head is fine, an expanded time axis is not): copy only otherwise."""
    if x.stride(-1) != 1 or x.stride(1) < x.shape[-1]:
        return x.contiguous()
    return x


def _build() -> ModuleType:
    here = Path(__file__).parent
    sources = [str(here / name) for name in SOURCES]
    # torch's loader rebuilds when the .cpp files change, not the headers, and knows nothing of
    # -march=native: name the build by a digest of every file and of this CPU, so an edited
    # kernel never meets a stale build and a cache shared by two kinds of CPU holds one each;
    # and of the sources' folder and flags, which the build's ninja file names: two checkouts
    # sharing the cache would otherwise rewrite one build folder and rebuild each other's
    files = b"".join((here / f).read_bytes() for f in SOURCES + HEADERS)
    where = "\0".join([str(here.resolve()), *FLAGS]).encode()
    name = f"{NAME}_{hashlib.sha256(files + _cpu_identity() + where).hexdigest()[:12]}"
    with _quiet_cuda_notice(), _ninja_on_path():
        if shutil.which("ninja") is None:
            raise MissingExtra("native", "building them", ["ninja"])
        from torch.utils.cpp_extension import load as load_extension

        _announce_build(name)
        return load_extension(
            name,
            sources,
            # without -fopenmp at::parallel_for runs serially; without -fno-trapping-math gcc
            # does not if-convert (so does not vectorise) the clamps of kernels.h's fast_exp;
            # -march=native: the build runs on the machine that uses it, so its elementwise
            # loops may use the widest vectors this CPU has (AVX-512 here, 4x SSE2's width)
            extra_cflags=FLAGS,
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )


def _announce_build(name: str) -> None:
    """Say on stderr, before a first call goes quiet for a build, what it waits for (nothing
    when the build is cached)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        where = Path(_get_build_directory(name, verbose=False))
    except Exception:  # a private torch helper: if it moves, still say what happens
        where = None
    if where is not None and (where / f"{name}.so").exists():
        return
    cache = "" if where is None else f", cached in {where}"
    print(
        f"attnzoo: compiling the native CPU kernels for this CPU (once, about 40 s{cache})",
        file=sys.stderr,
        flush=True,
    )


def _cpu_identity() -> bytes:
    """What -march=native depends on: the CPU's model and feature flags (Linux), else its name."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}".encode()
    keep = ("model name", "flags", "Features", "CPU part")  # x86 and ARM spellings
    lines = {ln.split(":")[0].strip(): ln for ln in info.splitlines() if ln.startswith(keep)}
    return "\n".join(sorted(lines.values())).encode()


@contextmanager
def _quiet_cuda_notice():  # noqa: ANN202
    """torch's extension module logs "No CUDA runtime is found" on import on CPU machines."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextmanager
def _ninja_on_path():  # noqa: ANN202
    """torch runs ``ninja`` from ``PATH``; the pinned ``ninja`` package sits beside this Python,
    which is not on ``PATH`` when the venv is not activated (e.g. ``.venv/bin/attnzoo``)."""
    old = os.environ.get("PATH", "")
    extra = [str(Path(sys.executable).parent)]
    try:
        import ninja  # the PyPI package: its BIN_DIR holds the executable

        extra.insert(0, ninja.BIN_DIR)
    except ImportError:
        pass
    os.environ["PATH"] = os.pathsep.join([*extra, old])
    try:
        yield
    finally:
        os.environ["PATH"] = old
