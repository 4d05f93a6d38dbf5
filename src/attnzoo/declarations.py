"""What a block declares it does beyond its math: in low precision (:class:`LowPrecision`,
per dtype a :class:`Tolerance` against float32 or a refusal) and under export
(:class:`ExportSupport`, per step the reason it cannot). Fields of :class:`attnzoo.MixerSpec`;
data only, no torch."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

LOW_DTYPES = ("bfloat16", "float16")  # the dtypes a LowPrecision declares (``torch.<name>``)


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How close a block cast to a low-precision dtype stays to float32:
    ``max|y - y32| <= atol + rtol * max|y32|`` over the whole output, ``y`` from the block after
    ``.to(dtype)`` on an input in ``dtype``, ``y32`` from the same block in float32 holding the
    same rounded weights, on the same rounded input (so the bound is the computation's rounding,
    not the weights' or the input's). ``tests/contract/test_low_precision.py`` checks it on CPU
    at small shapes (``d_model=32``, :mod:`attnzoo.testing`'s default sizes), in train mode (and
    eval mode for a block with a BatchNorm), for ``auto``, ``reference`` and every fast path but
    ``compiled``, with finite gradients. Longer inputs round more partial sums: the bound is a regression check, not a
    guarantee at every size.

    Attributes:
        rtol: the bound relative to the largest float32 output.
        atol: an absolute part of the bound (0 unless the output can be all near zero).
    """

    rtol: float
    atol: float = 0.0

    def __post_init__(self) -> None:
        for arg in ("rtol", "atol"):
            value = getattr(self, arg)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"Tolerance: {arg} must be a float, got {value!r}")
            if not 0 <= value < math.inf:
                raise ValueError(f"Tolerance: {arg} must be a finite float >= 0, got {value!r}")

    def allows(self, error: float, scale: float) -> bool:
        """Whether a largest deviation ``error`` is within the bound for outputs of largest
        magnitude ``scale``."""
        return error <= self.atol + self.rtol * scale


# about three units of rounding (2**-8 and 2**-11) of the largest output: what most blocks meet
# with room to spare on every impl; a block that needs more declares it (and says why)
BFLOAT16 = Tolerance(rtol=1.2e-2)
FLOAT16 = Tolerance(rtol=1.5e-3)


@dataclasses.dataclass(frozen=True)
class LowPrecision:
    """What a block does when it and its input are cast to ``torch.bfloat16`` or
    ``torch.float16`` (``mixer.to(dtype)``; autocast is another matter: the ops cast there).

    Each dtype maps to a :class:`Tolerance` the block meets against float32, or to the reason it
    refuses that dtype: then ``forward`` (and ``step``) raise ``TypeError`` naming the block, the
    dtype, the reason and the dtypes it supports, before any computation. ``refused_impls`` are
    paths that run in float32 and float64 only (fused kernels); with such an ``impl`` forward
    raises ``TypeError`` naming the block, the impl, the dtype and the impls that run (``auto``
    always picks one that does).

    Attributes:
        bfloat16: a :class:`Tolerance` (default :data:`BFLOAT16`) or a refusal reason.
        float16: a :class:`Tolerance` (default :data:`FLOAT16`) or a refusal reason.
        refused_impls: impls (of the config's ``impl``, not ``auto`` or ``reference``) that
            refuse both dtypes.
    """

    bfloat16: Tolerance | str = BFLOAT16
    float16: Tolerance | str = FLOAT16
    refused_impls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for dtype in LOW_DTYPES:
            entry = getattr(self, dtype)
            if isinstance(entry, str) and not entry.strip():
                raise ValueError(f"LowPrecision: {dtype} refusal reason must not be empty")
            if not isinstance(entry, Tolerance | str):
                raise TypeError(
                    f"LowPrecision: {dtype} must be a Tolerance or a refusal reason (str), "
                    f"got {type(entry).__name__}"
                )
        if not isinstance(self.refused_impls, tuple) or not all(
            isinstance(i, str) for i in self.refused_impls
        ):
            raise TypeError(
                f"LowPrecision: refused_impls must be a tuple of impl names, "
                f"got {self.refused_impls!r}"
            )
        bad = [i for i in self.refused_impls if i in ("auto", "reference")]
        if bad:
            raise ValueError(
                f"LowPrecision: refused_impls may not name {bad}: 'auto' picks a path that runs "
                "and 'reference' is plain PyTorch; refuse the dtype instead"
            )

    def entry(self, dtype: str) -> Tolerance | str:
        """The declaration for ``dtype`` (``"bfloat16"`` or ``"float16"``)."""
        if dtype not in LOW_DTYPES:
            raise ValueError(f"LowPrecision: dtype must be one of {LOW_DTYPES}, got {dtype!r}")
        return getattr(self, dtype)

    def runs(self, dtype: str) -> bool:
        return isinstance(self.entry(dtype), Tolerance)

    def to_dict(self) -> dict[str, Any]:
        """``{"bfloat16": {"rtol", "atol"} or {"refused": reason}, "float16": ...,
        "refused_impls": [...]}``."""
        out: dict[str, Any] = {}
        for dtype in LOW_DTYPES:
            entry = self.entry(dtype)
            out[dtype] = (
                dataclasses.asdict(entry) if isinstance(entry, Tolerance) else {"refused": entry}
            )
        out["refused_impls"] = list(self.refused_impls)
        return out


EXPORT_STEPS = ("torch", "dynamic", "onnx")


@dataclasses.dataclass(frozen=True)
class ExportSupport:
    """Whether a block exports, per step, each as the reason it cannot (``""``: it works).

    ``tests/contract/test_export.py`` checks every declaration both ways on CPU float32 in eval
    mode with the default ``impl="auto"``, for every pattern the block declares: a step without
    a reason must pass for each pattern, a step with one must fail for at least one.

    Attributes:
        torch: why ``torch.export.export(block, (x,))`` cannot capture it at static sizes, or
            cannot reproduce its eager output.
        dynamic: why exporting with a dynamic ``T`` (tokens) or dynamic grid sides (grids) via
            ``torch.export.Dim`` fails, or the program fails or differs at another size, when a
            static export works.
        onnx: why ``torch.onnx.export(block, (x,), dynamo=True)`` fails or onnxruntime's CPU
            output differs from torch's, when ``torch.export`` works.

    A ``torch`` reason implies the other two steps fail as well; they need no reason of their own.
    """

    torch: str = ""
    dynamic: str = ""
    onnx: str = ""

    def __post_init__(self) -> None:
        for step in EXPORT_STEPS:
            value = getattr(self, step)
            if not isinstance(value, str):
                raise TypeError(
                    f"ExportSupport: {step} must be a reason (str, '' when it works), "
                    f"got {type(value).__name__}"
                )
            if value and not value.strip():
                raise ValueError(f"ExportSupport: {step} reason must not be blank, got {value!r}")

    def reason(self, step: str) -> str:
        """Why ``step`` (``torch``, ``dynamic`` or ``onnx``) fails, ``""`` when it works: a
        ``torch`` reason is also the reason of the other two."""
        if step not in EXPORT_STEPS:
            raise ValueError(f"ExportSupport: step must be one of {EXPORT_STEPS}, got {step!r}")
        return getattr(self, step) or (self.torch if step != "torch" else "")

    def works(self, step: str) -> bool:
        return not self.reason(step)

    @property
    def summary(self) -> str:
        """In a few words: ``yes``, ``static sizes only``, ``torch.export only``,
        ``torch.export, static sizes only`` or ``no``."""
        if not self.works("torch"):
            return "no"
        dynamic, onnx = self.works("dynamic"), self.works("onnx")
        if dynamic and onnx:
            return "yes"
        if onnx:
            return "static sizes only"
        return "torch.export only" if dynamic else "torch.export, static sizes only"

    def to_dict(self) -> dict[str, str]:
        """``{"torch": reason, "dynamic": reason, "onnx": reason}`` (``""``: works)."""
        return dataclasses.asdict(self)
