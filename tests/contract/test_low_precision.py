"""Contract: every block does in bfloat16 and float16 on CPU what its spec declares
(``MixerSpec.low_precision``), for every impl but ``compiled`` (``chunk`` through
``torch.compile``, seconds per shape and dtype; the gate checks it against ``reference``).

A dtype the spec gives a :class:`attnzoo.Tolerance`: the block cast with ``.to(dtype)`` returns
that dtype (no silent upcast), stays within the tolerance of the float32 block holding the same
rounded weights on the same rounded input, and gets finite gradients for its input and every
parameter. A refused dtype, or an impl the spec refuses: ``TypeError`` naming the block, the
dtype and what runs, before any computation. Parametrised from the registry (plus the
throwaway blocks of other layouts and roles); nothing here names a mechanism.
"""

from __future__ import annotations

import copy
import dataclasses
import re

import pytest
import torch
from torch import nn

import attnzoo as az
from attnzoo.registry import unregister_mixer
from attnzoo.spec import LOW_DTYPES
from attnzoo.testing import randomise
from tests.contract.inputs import D_MODEL, T, all_specs, build, call, ids, inputs

DTYPES = {name: getattr(torch, name) for name in LOW_DTYPES}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Tiny shapes: a second intra-op thread only adds synchronisation, which on a busy machine
    made this file ~20x slower (the conftest restores the session's count after each test)."""
    torch.set_num_threads(1)


CASES = [
    (spec, dtype, impl)
    for spec in all_specs()
    for dtype in LOW_DTYPES
    for impl in spec.impls
    if impl != "compiled"
]


@dataclasses.dataclass(frozen=True)
class Deviation:
    """The largest deviation of one low-precision call from float32, in eval and train mode."""

    error: float  # max |y - y32| over both modes
    scale: float  # max |y32| over both modes
    grads_finite: bool

    @property
    def relative(self) -> float:
        return self.error / self.scale if self.scale else self.error


def _has_batchnorm(m: nn.Module) -> bool:
    return any(isinstance(b, nn.modules.batchnorm._BatchNorm) for b in m.modules())


def deviation(spec: az.MixerSpec, dtype: str, impl: str) -> Deviation:
    """Run ``spec``'s block with ``impl`` in ``torch.<dtype>`` next to float32 on the same
    rounded weights and input: eval mode forward (blocks with a BatchNorm: running statistics),
    then train mode forward and backward with a random cotangent."""
    dt = DTYPES[dtype]
    pattern = spec.patterns[0]
    torch.manual_seed(0)
    low = randomise(build(spec, pattern, impl=impl), seed=1, constant_only=True).to(dt)
    ref = copy.deepcopy(low).float()  # float32 with the rounded weights
    x, ctx = inputs(spec, ref, pattern, dtype=dt)  # rounded input
    wide = (x.float(), None if ctx is None else ctx.float())
    outputs = []
    if _has_batchnorm(low):
        with torch.no_grad():
            outputs.append((call(low.eval(), x, ctx), call(ref.eval(), *wide)))
        low.train(), ref.train()
    x.requires_grad_(True)
    y = call(low, x, ctx)
    assert y.dtype == dt, f"{spec.name}: a {dtype} block returned {y.dtype}"
    outputs.append((y.detach(), call(ref, *wide).detach()))
    (y.float() * torch.randn(y.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    grads = [x.grad, *(p.grad for p in low.parameters())]
    finite = all(g is None or bool(torch.isfinite(g).all()) for g in grads)
    error = max(float((a.float() - b).abs().max()) for a, b in outputs)
    scale = max(float(b.abs().max()) for _, b in outputs)
    return Deviation(error, scale, finite)


@pytest.mark.parametrize(
    "spec,dtype,impl", CASES, ids=lambda v: ids(v) if isinstance(v, az.MixerSpec) else str(v)
)
def test_low_precision_is_as_declared(spec: az.MixerSpec, dtype: str, impl: str) -> None:
    refusal = spec.low_precision_refusal(dtype, impl)
    if refusal is not None:
        m = build(spec, spec.patterns[0], impl=impl).to(DTYPES[dtype])
        x, ctx = inputs(spec, m, spec.patterns[0], dtype=DTYPES[dtype])
        with pytest.raises(TypeError, match=f"^{re.escape(refusal)}$"):
            call(m, x, ctx)
        assert spec.name in refusal and f"torch.{dtype}" in refusal and "float32" in refusal
        return
    tol = spec.low_precision.entry(dtype)
    assert isinstance(tol, az.Tolerance)
    d = deviation(spec, dtype, impl)
    assert tol.allows(d.error, d.scale), (
        f"{spec.name} (impl={impl!r}) in {dtype}: max |y - y32| = {d.error:.3g} "
        f"({d.relative:.3g} of max |y32| = {d.scale:.3g}) exceeds the declared {tol}"
    )
    assert d.grads_finite, f"{spec.name} (impl={impl!r}) in {dtype}: a non-finite gradient"


def test_refused_impls_are_fast_impls() -> None:
    """What a spec refuses is a fast path it has (``auto`` and ``reference`` always run)."""
    for spec in all_specs():
        assert set(spec.low_precision.refused_impls) <= set(spec.fast_impls), spec.name
        for dtype in LOW_DTYPES:
            assert spec.low_precision_refusal(dtype, "auto") is None or isinstance(
                spec.low_precision.entry(dtype), str
            )


def test_to_dict_carries_the_declaration() -> None:
    for spec in all_specs():
        d = spec.to_dict()["low_precision"]
        assert set(d) == {*LOW_DTYPES, "refused_impls"}
        for dtype in LOW_DTYPES:
            entry = spec.low_precision.entry(dtype)
            want = {"refused": entry} if isinstance(entry, str) else dataclasses.asdict(entry)
            assert d[dtype] == want


# ---- a block that refuses float16, declared here ------------------------------------------
@dataclasses.dataclass(frozen=True)
class _NoHalfConfig(az.MixerConfig):
    """A throwaway config.

    Attributes:
        impl: ``auto`` | ``reference`` | ``fused``.
    """

    impl: str = "auto"


REASON = "its sums pass float16's range"


@pytest.fixture
def no_half() -> az.MixerSpec:
    """A throwaway block that refuses float16 and runs bfloat16 with a loose tolerance."""

    @az.register_mixer(
        "_test_no_half",
        config=_NoHalfConfig,
        family="other",
        complexity="O(T·D)",
        paper=az.Paper("test", 2026, "-"),
        peer="-",
        flops=lambda *a: 0,
        low_precision=az.LowPrecision(float16=REASON, bfloat16=az.Tolerance(rtol=0.1)),
    )
    class NoHalf(az.Mixer):
        def __init__(self, cfg: _NoHalfConfig) -> None:
            super().__init__(cfg)
            self.lin = nn.Linear(cfg.d_model, cfg.d_model)

        def mix(self, x: torch.Tensor, context: None, mask: object) -> torch.Tensor:
            return self.lin(x)

    yield az.get_spec("_test_no_half")
    unregister_mixer("_test_no_half")


def test_a_refused_dtype_names_block_dtype_reason_and_supported(no_half: az.MixerSpec) -> None:
    m = az.build_mixer("_test_no_half", d_model=D_MODEL).half()
    want = (
        f"^_test_no_half does not run in torch.float16: {REASON}; "
        r"supported dtypes: torch\.float32, torch\.float64, torch\.bfloat16$"
    )
    with pytest.raises(TypeError, match=want):
        m(torch.randn(2, T, D_MODEL, dtype=torch.float16))
    m.bfloat16()(torch.randn(2, T, D_MODEL, dtype=torch.bfloat16))  # declared to run
    assert no_half.to_dict()["low_precision"]["float16"] == {"refused": REASON}


def test_bad_declarations_are_refused_at_registration() -> None:
    common = dict(
        config=_NoHalfConfig, family="other", complexity="-", paper=az.Paper("t", 2026, "-"),
        peer="-", flops=lambda *a: 0,
    )  # fmt: skip
    native = az.LowPrecision(refused_impls=("native",))
    with pytest.raises(ValueError, match=r"refused_impls \['native'\] are not fast impls"):
        az.register_mixer("_test_bad_lp", low_precision=native, **common)(
            type("Bad", (az.Mixer,), {})
        )
    assert "_test_bad_lp" not in [s.name for s in az.list_mixers()]
    bad: object = {"float16": "no"}
    with pytest.raises(TypeError, match="low_precision must be a LowPrecision, got dict"):
        az.register_mixer("_test_bad_lp", low_precision=bad, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="refused_impls may not name \\['auto'\\]"):
        az.LowPrecision(refused_impls=("auto",))
    with pytest.raises(ValueError, match="float16 refusal reason must not be empty"):
        az.LowPrecision(float16=" ")
    with pytest.raises(TypeError, match="bfloat16 must be a Tolerance or a refusal reason"):
        az.LowPrecision(bfloat16=0.01)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rtol must be a finite float >= 0, got -1"):
        az.Tolerance(rtol=-1)
