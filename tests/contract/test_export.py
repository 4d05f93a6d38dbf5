"""Every block exports with ``torch.export`` and to ONNX, or its spec says why not.

Parametrised from the registry (plus the throwaway blocks of :mod:`tests.contract.throwaway`),
like :mod:`tests.contract.test_contract`: nothing here names a mechanism. Each block is built
with its defaults (``impl="auto"``) on CPU in float32, in eval mode, with its constant
parameters (zero biases, unit scales, BatchNorm statistics) moved by
:func:`attnzoo.testing.randomise`, and is checked for every pattern it declares (cross patterns
and fusion blocks with their ``context``), in three steps that match the fields of
:class:`attnzoo.ExportSupport`:

- ``torch``: ``torch.export.export`` at static sizes; the program's output equals eager
  (``assert_close``'s float32 defaults, ``rtol=1.3e-6, atol=1e-5``).
- ``dynamic``: every token axis of ``x`` (and of ``context``) a ``torch.export.Dim``; the program
  is run at other sizes (``T`` 7 -> 19, a 7x9 grid -> 10x12: more windows, other padding) and
  equals eager there.
- ``onnx``: ``torch.onnx.export(..., dynamo=True)`` at static sizes, run by onnxruntime on the
  CPU; equal to eager within ``rtol=1e-4, atol=1e-5`` (float32 kernels that sum in another
  order).

The declarations are enforced both ways: a step without a reason must work for every pattern,
and a step with one must fail for at least one pattern (so a stale reason fails here too). A
``torch`` reason covers the other two steps, which are then skipped.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import re
import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
from torch.export import Dim

import attnzoo as az
from attnzoo.testing import example_call, randomise
from tests.contract.inputs import all_specs, ids

SPECS = all_specs()
D_MODEL = 16
# the sizes of the second call of a dynamically exported program, per layout (x, context)
OTHER_SIZES = {"tokens": (19,), "grid2d": (10, 12), "grid3d": (4, 5, 6)}
OTHER_CONTEXT_SIZES = {"tokens": (11,), "grid2d": (6, 5), "grid3d": (3, 2, 5)}
MAX_SIDE = {"tokens": 1024, "grid2d": 64, "grid3d": 16}
ONNX_TOL = {"rtol": 1e-4, "atol": 1e-5}

Args = tuple[torch.Tensor, torch.Tensor | None]


def _block(spec: az.MixerSpec, pattern: str) -> az.Mixer:
    m = az.build_mixer(spec.name, d_model=D_MODEL, causal=pattern.startswith("causal"))
    return randomise(m, seed=0, constant_only=True).eval()


def _args(spec: az.MixerSpec, m: az.Mixer, pattern: str, *, other: bool = False) -> Args:
    g = torch.Generator().manual_seed(1 if other else 0)
    if not other:
        return example_call(spec, m, pattern=pattern, generator=g)
    c_layout = spec.context_layout or spec.layout
    return example_call(spec, m, pattern=pattern, generator=g, sizes=OTHER_SIZES[spec.layout],
                        context_sizes=OTHER_CONTEXT_SIZES[c_layout])  # fmt: skip


def _kwargs(ctx: torch.Tensor | None) -> dict[str, torch.Tensor]:
    return {} if ctx is None else {"context": ctx}


def _eager(m: az.Mixer, x: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
    with torch.no_grad():
        return m(x, **_kwargs(ctx))


def _dims(layout: str, prefix: str) -> dict[int, Dim]:
    axes = az.LAYOUTS[layout].axes
    top = MAX_SIDE[layout]
    return {i + 1: Dim(f"{prefix}{a}", min=2, max=top) for i, a in enumerate(axes)}


def _torch_step(spec: az.MixerSpec, m: az.Mixer, pattern: str) -> None:
    x, ctx = _args(spec, m, pattern)
    ep = torch.export.export(m, (x,), kwargs=_kwargs(ctx))
    with torch.no_grad():
        got = ep.module()(x, **_kwargs(ctx))
    torch.testing.assert_close(got, _eager(m, x, ctx))


def _dynamic_step(spec: az.MixerSpec, m: az.Mixer, pattern: str) -> None:
    x, ctx = _args(spec, m, pattern)
    shapes: dict[str, object] = {"x": _dims(spec.layout, "x_")}
    if ctx is not None:
        shapes["context"] = _dims(spec.context_layout or spec.layout, "c_")
    ep = torch.export.export(m, (x,), kwargs=_kwargs(ctx), dynamic_shapes=shapes)
    x2, ctx2 = _args(spec, m, pattern, other=True)
    with torch.no_grad():
        got = ep.module()(x2, **_kwargs(ctx2))
    torch.testing.assert_close(got, _eager(m, x2, ctx2))


def _onnx_step(spec: az.MixerSpec, m: az.Mixer, pattern: str) -> None:
    import onnxruntime as ort

    x, ctx = _args(spec, m, pattern)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(m, (x,), kwargs=_kwargs(ctx), dynamo=True, verbose=False)
    buffer = io.BytesIO()
    program.save(buffer)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    feeds = [t.numpy() for t in (x, ctx) if t is not None]
    names = [i.name for i in session.get_inputs()]
    assert len(names) == len(feeds), f"{spec.name}: ONNX inputs {names} for {len(feeds)} tensors"
    (out,) = session.run(None, dict(zip(names, feeds, strict=True)))
    torch.testing.assert_close(torch.from_numpy(out), _eager(m, x, ctx), **ONNX_TOL)


STEPS: dict[str, Callable[[az.MixerSpec, az.Mixer, str], None]] = {
    "torch": _torch_step,
    "dynamic": _dynamic_step,
    "onnx": _onnx_step,
}


def _failures(spec: az.MixerSpec, step: str, *, first: bool) -> dict[str, str]:
    """Per pattern of ``spec``, why ``step`` failed (patterns where it worked are left out);
    ``first``: stop at the first failure."""
    out = {}
    for pattern in spec.patterns:
        try:
            STEPS[step](spec, _block(spec, pattern), pattern)
        except Exception as exc:  # any failure counts: the declaration says which
            out[pattern] = f"{type(exc).__name__}: {_gist(exc)}"
            if first:
                break
    return out


def _gist(exc: Exception) -> str:
    """The first lines of the message (for the ONNX exporter's, those of its summary)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # the exporter's terminal colours
    text = text.split("## Exception summary", 1)[-1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " / ".join(lines[:3])[:400]


def _check(spec: az.MixerSpec, step: str) -> None:
    reason = spec.export.reason(step)
    if step != "torch" and spec.export.torch:
        pytest.skip(f"{spec.name} does not export with torch.export: {spec.export.torch}")
    failed = _failures(spec, step, first=bool(reason))
    if reason:
        assert failed, (
            f"{spec.name}: export step {step!r} works for every pattern {spec.patterns}, but the "
            f"spec declares ExportSupport({step}={reason!r}): remove the stale reason"
        )
    else:
        assert not failed, (
            f"{spec.name}: export step {step!r} fails: {failed}; fix the block or declare "
            f"ExportSupport({step}='<why>') in its register_mixer"
        )


@pytest.fixture(autouse=True, scope="module")
def _one_onnx_registry() -> Iterator[None]:
    """Build the exporter's table of ATen -> ONNX functions once for this module, not once per
    ``torch.onnx.export`` call (about 3 s each on this machine: it parses torchlib's sources).
    A private torch API: if it moves, each export just builds its own table again."""
    try:
        from torch.onnx._internal.exporter._registration import ONNXRegistry
    except ImportError:
        yield
        return
    build = ONNXRegistry.from_torchlib
    if not callable(build):
        yield
        return
    cached = functools.cache(build)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ONNXRegistry, "from_torchlib", staticmethod(cached))
        yield


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_torch_export_equals_eager(spec: az.MixerSpec) -> None:
    _check(spec, "torch")


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_dynamic_sizes_export(spec: az.MixerSpec) -> None:
    _check(spec, "dynamic")


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_onnx_runs_in_onnxruntime(spec: az.MixerSpec) -> None:
    _check(spec, "onnx")


def test_a_stale_or_missing_declaration_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself: a block that exports, declared as failing, is reported as stale; the
    same block with a step that fails and no reason is reported as failing."""
    spec = next(s for s in SPECS if s.export == az.ExportSupport())
    stale = dataclasses.replace(spec, export=az.ExportSupport(torch="it does not"))
    with pytest.raises(AssertionError, match="remove the stale reason"):
        _check(stale, "torch")

    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setitem(STEPS, "torch", broken)
    with pytest.raises(AssertionError, match="RuntimeError: boom"):
        _check(spec, "torch")
