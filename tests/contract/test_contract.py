"""Contract tests over the whole registry (DESIGN §4.2).

Parametrised from ``az.list_mixers()``: a mechanism is covered the day it is registered.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import attnzoo as az
from attnzoo.registry import unregister_mixer
from tests.contract.inputs import (
    D_MODEL,
    S,
    T,
    all_specs,
    build,
    ids,
    make_context,
    make_x,
    spec_patterns,
)

SPECS = all_specs()
PAIRS = spec_patterns()


def run(
    m: az.Mixer, spec: az.MixerSpec, pattern: str, x: torch.Tensor, s_len: int = S
) -> torch.Tensor:
    if pattern.endswith("cross"):
        return m(x, context=make_context(spec, m.d_model, x.shape[0], s_len))
    return m(x)


@pytest.mark.parametrize("spec", SPECS, ids=ids)
@pytest.mark.parametrize("d_model", [32, 64, 48])
def test_builds_from_d_model_alone(spec: az.MixerSpec, d_model: int) -> None:
    for causal in sorted({p.startswith("causal") for p in spec.patterns}):
        m = az.build_mixer(spec.name, d_model=d_model, causal=causal)
        assert isinstance(m, az.Mixer) and m.spec is spec
        assert sum(p.numel() for p in m.parameters()) > 0


@pytest.mark.parametrize("spec,pattern", PAIRS, ids=ids)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_finite(spec: az.MixerSpec, pattern: str, dtype: torch.dtype) -> None:
    m = build(spec, pattern).to(dtype)
    x = make_x(spec).to(dtype)
    ctx = make_context(spec).to(dtype) if pattern.endswith("cross") else None
    y = m(x, context=ctx) if ctx is not None else m(x)
    assert y.shape == x.shape and y.dtype == dtype
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("spec,pattern", [(s, p) for s, p in PAIRS if p.endswith("cross")], ids=ids)
@pytest.mark.parametrize("s_len", [1, S, 11])
def test_cross_with_other_context_length(spec: az.MixerSpec, pattern: str, s_len: int) -> None:
    m = build(spec, pattern)
    x = make_x(spec)
    assert run(m, spec, pattern, x, s_len).shape == x.shape


@pytest.mark.parametrize("spec,pattern", PAIRS, ids=ids)
def test_every_parameter_gets_a_gradient(spec: az.MixerSpec, pattern: str) -> None:
    m = build(spec, pattern)
    x = make_x(spec).requires_grad_(True)
    y = run(m, spec, pattern, x)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in m.named_parameters():
        assert p.grad is not None, f"{spec.name}: parameter {name} got no gradient ({pattern})"
        assert torch.isfinite(p.grad).all(), (
            f"{spec.name}: parameter {name} has a non-finite gradient"
        )
        assert p.grad.abs().sum() > 0, (
            f"{spec.name}: parameter {name} has an all-zero gradient ({pattern})"
        )


CAUSAL = [(s, p) for s, p in PAIRS if p.startswith("causal") and s.dims == 1]


@pytest.mark.parametrize("spec,pattern", CAUSAL, ids=ids)
@pytest.mark.parametrize("t0", [0, 3, 6])
def test_causality(spec: az.MixerSpec, pattern: str, t0: int) -> None:
    """Changing tokens after t0 (and, for cross, context keys after t0's aligned key) leaves
    outputs up to t0 unchanged."""
    m = build(spec, pattern)
    x = make_x(spec, length=T)
    x2 = x.clone()
    x2[:, t0 + 1 :] += torch.randn_like(x2[:, t0 + 1 :]) * 3
    if pattern == "causal-self":
        y, y2 = m(x), m(x2)
    else:
        s_len = 9
        ctx = make_context(spec, length=s_len)
        ctx2 = ctx.clone()
        last_visible = t0 + s_len - T  # bottom-right alignment
        ctx2[:, last_visible + 1 :] += torch.randn_like(ctx2[:, last_visible + 1 :]) * 3
        y, y2 = m(x, context=ctx), m(x2, context=ctx2)
    torch.testing.assert_close(y[:, : t0 + 1], y2[:, : t0 + 1], atol=1e-6, rtol=1e-6)
    if t0 + 1 < T:
        assert not torch.allclose(y[:, t0 + 1 :], y2[:, t0 + 1 :]), (
            "the perturbation changed nothing"
        )


STREAMING = [s for s in SPECS if s.state != "none"]


@pytest.mark.parametrize("spec", STREAMING, ids=ids)
def test_step_equals_forward(spec: az.MixerSpec) -> None:
    m = build(spec, "causal-self").double()
    x = make_x(spec, length=11).double()
    y = m(x)
    state = m.init_state(batch_size=x.shape[0], dtype=torch.float64)
    outs = []
    for t in range(x.shape[1]):
        y_t, state = m.step(x[:, t], state)
        outs.append(y_t)
    torch.testing.assert_close(torch.stack(outs, dim=1), y, atol=1e-10, rtol=1e-10)


def test_stateless_mixers_refuse_step() -> None:
    for spec in SPECS:
        if spec.state == "none":
            m = az.build_mixer(spec.name, d_model=D_MODEL)
            with pytest.raises(ValueError, match="no streaming state"):
                m.init_state(batch_size=1)


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_config_json_round_trip(spec: az.MixerSpec) -> None:
    pattern = next((p for p in spec.patterns if p.endswith("self")), spec.patterns[0])
    m = build(spec, pattern)
    text = m.cfg.to_json()
    again = az.mixer_from_json(text)
    assert type(again) is type(m) and again.cfg == m.cfg
    again.load_state_dict(m.state_dict())
    x = make_x(spec)
    ctx = make_context(spec) if pattern.endswith("cross") else None
    torch.testing.assert_close(again(x, context=ctx), m(x, context=ctx))


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_unknown_config_key_is_rejected_with_suggestion(spec: az.MixerSpec) -> None:
    fields = [f.name for f in dataclasses.fields(spec.config) if f.name not in ("d_model",)]
    real = max(fields, key=len)
    typo = real[:-1]
    with pytest.raises(TypeError, match=f"unknown config key '{typo}' \\(did you mean '{real}'"):
        az.build_mixer(spec.name, d_model=D_MODEL, **{typo: 1})


def _call_pattern(spec: az.MixerSpec, pattern: str) -> None:
    m = build(spec, pattern)
    run(m, spec, pattern, make_x(spec))


def test_unsupported_patterns_raise() -> None:
    """Every (mixer, pattern) the registry declares unsupported raises, naming the supported ones."""
    for spec in SPECS:
        for pattern in az.PATTERNS:
            if pattern in spec.patterns:
                continue
            with pytest.raises(
                ValueError,
                match=f"does not support .*supported patterns: {', '.join(spec.patterns)}",
            ):
                _call_pattern(spec, pattern)


@dataclasses.dataclass(frozen=True)
class _SelfOnlyConfig(az.MixerConfig):
    pass


@pytest.fixture
def self_only_spec() -> az.MixerSpec:
    """A throwaway mixer that declares only ``noncausal-self`` (the built-ins support all four)."""

    @az.register_mixer(
        "_test_self_only",
        config=_SelfOnlyConfig,
        family="other",
        dims=1,
        patterns=("noncausal-self",),
        complexity="O(T·D)",
        paper=az.Paper("test", 2026, "-"),
        peer="-",
        flops=lambda *a: 0,
    )
    class SelfOnly(az.Mixer):
        def __init__(self, cfg: _SelfOnlyConfig) -> None:
            super().__init__(cfg)
            self.lin = torch.nn.Linear(cfg.d_model, cfg.d_model)

        def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
            self.pattern_of(context)
            return self.lin(x)

    yield az.get_spec("_test_self_only")
    unregister_mixer("_test_self_only")


@pytest.mark.parametrize("pattern", ["causal-self", "noncausal-cross", "causal-cross"])
def test_declared_unsupported_pattern_raises(self_only_spec: az.MixerSpec, pattern: str) -> None:
    with pytest.raises(
        ValueError,
        match=f"_test_self_only does not support .*'{pattern.split('-')[0]}.*supported patterns: noncausal-self$",
    ):
        _call_pattern(self_only_spec, pattern)


@pytest.mark.compile
@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_torch_compile_smoke(spec: az.MixerSpec) -> None:
    pattern = "causal-self" if "causal-self" in spec.patterns else spec.patterns[0]
    m = build(spec, pattern)
    x = make_x(spec)
    compiled = torch.compile(m, dynamic=False)
    ctx = make_context(spec) if pattern.endswith("cross") else None
    want = m(x, context=ctx) if ctx is not None else m(x)
    got = compiled(x, context=ctx) if ctx is not None else compiled(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
