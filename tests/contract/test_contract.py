"""Contract tests over the whole registry (DESIGN §4.2), for every layout and role.

Parametrised from ``az.list_mixers()`` plus the throwaway grid3d mixer, 2-D fusion block and
pooling head of :mod:`tests.contract.throwaway`: a block is covered the day it is registered.
Inputs come from the spec (layout, context layout, role); nothing here names a mechanism.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

import attnzoo as az
from attnzoo.bench.gate import check_mixer
from attnzoo.registry import unregister_mixer
from attnzoo.testing import randomise, stream
from tests.contract.inputs import (
    D_MODEL,
    T,
    all_specs,
    build,
    call,
    expected_shape,
    ids,
    inputs,
    spec_patterns,
)

SPECS = all_specs()
PAIRS = spec_patterns()


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
    x, ctx = inputs(spec, m, pattern, dtype=dtype)
    y = call(m, x, ctx)
    assert y.shape == expected_shape(spec, x, m) and y.dtype == dtype
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("spec,pattern", [(s, p) for s, p in PAIRS if p.endswith("cross")], ids=ids)
@pytest.mark.parametrize("s_len", [1, 5, 11])
def test_cross_with_other_context_sizes(spec: az.MixerSpec, pattern: str, s_len: int) -> None:
    m = build(spec, pattern)
    x, ctx = inputs(spec, m, pattern, context_length=s_len)
    assert call(m, x, ctx).shape == expected_shape(spec, x, m)


@pytest.mark.parametrize("spec,pattern", PAIRS, ids=ids)
@pytest.mark.parametrize("d_model", [32, 48])
def test_every_parameter_gets_a_gradient(spec: az.MixerSpec, pattern: str, d_model: int) -> None:
    m = build(spec, pattern, d_model=d_model)
    x, ctx = inputs(spec, m, pattern)
    x.requires_grad_(True)
    y = call(m, x, ctx)
    # the training loss: a block's auxiliary loss trains parameters the output does not reach
    # (sparsifiner's connectivity predictor, behind a detached mask)
    loss, aux = (y * torch.randn(y.shape)).sum(), m.aux_loss()
    (loss if aux is None else loss + aux).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in m.named_parameters():
        assert p.grad is not None, f"{spec.name}: parameter {name} got no gradient ({pattern})"
        assert torch.isfinite(p.grad).all(), (
            f"{spec.name}: parameter {name} has a non-finite gradient"
        )
        assert p.grad.abs().sum() > 0, (
            f"{spec.name}: parameter {name} has an all-zero gradient ({pattern})"
        )


CAUSAL = [(s, p) for s, p in PAIRS if p.startswith("causal") and s.layout == "tokens"]


@pytest.mark.parametrize("spec,pattern", CAUSAL, ids=ids)
@pytest.mark.parametrize("t0", [0, 3, 6])
def test_causality(spec: az.MixerSpec, pattern: str, t0: int) -> None:
    """Changing tokens after t0 (and, for cross, context keys after t0's aligned key) leaves
    outputs up to t0 unchanged."""
    m = build(spec, pattern)
    x, _ = inputs(spec, m, pattern, length=T)
    x2 = x.clone()
    x2[:, t0 + 1 :] += torch.randn_like(x2[:, t0 + 1 :]) * 3
    if pattern == "causal-self":
        y, y2 = m(x), m(x2)
    else:
        s_len = 9
        _, ctx = inputs(spec, m, pattern, context_length=s_len)
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
    x, _ = inputs(spec, m, "causal-self", length=11, dtype=torch.float64)
    got, state = stream(m, x, dtype=torch.float64)
    assert state.position == x.shape[1]
    torch.testing.assert_close(got, m(x), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_config_json_round_trip(spec: az.MixerSpec) -> None:
    pattern = next((p for p in spec.patterns if p.endswith("self")), spec.patterns[0])
    m = build(spec, pattern)
    again = az.mixer_from_json(m.cfg.to_json())
    assert type(again) is type(m) and again.cfg == m.cfg
    again.load_state_dict(m.state_dict())
    x, ctx = inputs(spec, m, pattern)
    torch.testing.assert_close(call(again, x, ctx), call(m, x, ctx))


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_unknown_config_key_is_rejected_with_suggestion(spec: az.MixerSpec) -> None:
    fields = [f.name for f in dataclasses.fields(spec.config) if f.name not in ("d_model",)]
    real = max(fields, key=len)
    typo = real[:-1]
    with pytest.raises(TypeError, match=f"unknown config key '{typo}' \\(did you mean '{real}'"):
        az.build_mixer(spec.name, d_model=D_MODEL, **{typo: 1})


def _violations(limits: dict[str, object]) -> list[object]:
    """Values just outside each declared limit."""
    out: list[object] = []
    if "ge" in limits:
        out.append(limits["ge"] - 1 if isinstance(limits["ge"], int) else limits["ge"] - 0.5)
    if "gt" in limits:
        out.append(limits["gt"])
    if "le" in limits:
        out.append(limits["le"] + 1)
    if "finite" in limits:
        out.append(float("inf"))
    if "odd" in limits:
        out.append(4)
    return out


LIMITS = [(s, f, lim) for s in SPECS for f, lim in s.config.limits().items() if f != "d_model"]


@pytest.mark.parametrize(
    "spec,field,limits", LIMITS, ids=lambda v: ids(v) if not isinstance(v, dict) else ""
)
def test_declared_limits_are_enforced(spec: az.MixerSpec, field: str, limits: dict) -> None:
    """Every limit a config declares rejects the value just outside it, naming the block, the
    field and the value (``d_model`` itself is the registry's, tested in test_registry)."""
    for bad in _violations(limits):
        with pytest.raises(ValueError, match=rf"{spec.name}: {field} must be .*got {bad!r}"):
            az.build_mixer(spec.name, d_model=64, **{field: bad})


def test_unsupported_patterns_raise() -> None:
    """Every (block, pattern) the registry declares unsupported raises, naming the supported ones."""
    for spec in SPECS:
        supported = ", ".join(spec.patterns)
        for pattern in az.PATTERNS:
            if pattern in spec.patterns:
                continue
            causal = pattern.startswith("causal")
            if not any(p.startswith("causal") == causal for p in spec.patterns):
                with pytest.raises(ValueError, match=f"supported patterns: {supported}"):
                    az.build_mixer(spec.name, d_model=D_MODEL, causal=causal)
                continue
            m = az.build_mixer(spec.name, d_model=D_MODEL, causal=causal)
            other = next(p for p in spec.patterns if p.startswith("causal") == causal)
            x, ctx = inputs(spec, m, other)
            if pattern.endswith("cross"):  # a context the block cannot take
                ctx = az.LAYOUTS[spec.layout].example(x.shape[0], x.shape[1:-1], m.d_model)
            with pytest.raises(
                ValueError, match=f"does not support .*supported patterns: {supported}"
            ):
                m(x, context=ctx if pattern.endswith("cross") else None)


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_bad_calls_are_named(spec: az.MixerSpec) -> None:
    """Wrong rank, width, dtype, batch and mask, and streaming on a block without a state, each
    raise an error naming the block and the argument."""
    pattern = spec.patterns[0]
    m = build(spec, pattern)
    layout = az.LAYOUTS[spec.layout]
    x, ctx = inputs(spec, m, pattern)
    extra = x[..., None, :]  # one axis too many
    with pytest.raises(ValueError, match=f"{spec.name}: x must be {re.escape(layout.shape)}"):
        call(m, extra, ctx)
    with pytest.raises(ValueError, match=f"{spec.name}: x last dim must be {D_MODEL}"):
        call(m, x[..., : D_MODEL // 2], ctx)
    with pytest.raises(TypeError, match=f"{spec.name}: x must be a floating-point tensor"):
        call(m, x.long(), ctx)
    with pytest.raises(TypeError, match=f"{spec.name}: x must be a torch.Tensor"):
        call(m, x.tolist(), ctx)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=f"{spec.name}: mask must be an attnzoo.Mask"):
        m(x, context=ctx, mask="causal")  # type: ignore[arg-type]
    if ctx is not None:
        with pytest.raises(
            ValueError, match=f"{spec.name}: context batch 1 differs from x batch 2"
        ):
            m(x, context=ctx[:1])
        with pytest.raises(
            ValueError, match=f"{spec.name}: context last dim must be {m.context_dim}"
        ):
            m(x, context=ctx[..., :1])
    elif spec.role_info.context == "required":
        pytest.fail(f"{spec.name}: a block that needs a context declares a self pattern")
    if spec.state == "none":
        with pytest.raises(ValueError, match=f"{spec.name} has no streaming state"):
            m.init_state(batch_size=1)


@pytest.mark.parametrize("spec", STREAMING, ids=ids)
def test_bad_streaming_calls_are_named(spec: az.MixerSpec) -> None:
    m = build(spec, "causal-self")
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        m.init_state(0)
    with pytest.raises(TypeError, match=r"unknown options \['device_'\]"):
        m.init_state(1, device_="cpu")
    state = m.init_state(2)
    with pytest.raises(ValueError, match="x_t batch 1 differs from the state's 2"):
        m.step(torch.randn(1, D_MODEL), state)
    with pytest.raises(ValueError, match=r"x_t must be \[B, D\]"):
        m.step(torch.randn(2, 1, D_MODEL), state)
    with pytest.raises(TypeError, match="state must come from init_state"):
        m.step(torch.randn(2, D_MODEL), {"kv": 1})
    if "noncausal-self" in spec.patterns:
        with pytest.raises(ValueError, match=f"{spec.name}: step\\(\\) streams the causal-self"):
            build(spec, "noncausal-self").init_state(1)


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_reference_and_a_fast_path_are_declared(spec: az.MixerSpec) -> None:
    """Every block has ``impl="reference"`` (its plain spec) and at least one fast path."""
    assert "reference" in spec.impls, f"{spec.name}: no impl='reference' (impls: {spec.impls})"
    assert spec.fast_impls, f"{spec.name}: no fast path besides the reference ({spec.impls})"


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_gate_passes(spec: az.MixerSpec) -> None:
    """The bench's gate: every fast path equals the reference, forward and backward, on every
    pattern (and streaming equals the parallel forward), on randomised weights."""
    results = check_mixer(spec)
    bad = [r for r in results if not r.ok]
    assert not bad, bad
    compared = {r.impl for r in results if "shape/finite" not in r.detail}
    assert set(spec.fast_impls) <= compared, (spec.fast_impls, compared)


MAPS = [(s, p) for s, p in PAIRS if s.attention_maps]


@pytest.mark.parametrize("spec,pattern", MAPS, ids=ids)
def test_attention_maps_reproduce_the_output(spec: az.MixerSpec, pattern: str) -> None:
    """``attention_maps()`` returns ``[B, H, N, M]`` weights over the flattened tokens; applied to its
    values they give the block's output."""
    m = randomise(build(spec, pattern), seed=3).double()
    x, ctx = inputs(spec, m, pattern, dtype=torch.float64)
    maps = m.attention_maps(x, context=ctx)
    w = maps.weights
    n = az.LAYOUTS[spec.layout].tokens(x.shape[1:-1])
    assert w.dim() == 4 and w.shape[0] == x.shape[0] and w.shape[2] == n
    if ctx is not None:
        assert w.shape[3] == az.LAYOUTS[spec.context_layout].tokens(ctx.shape[1:-1])
    assert torch.isfinite(w).all()
    assert maps.exact, f"{spec.name}: maps without values cannot be checked"
    torch.testing.assert_close(maps.output(), call(m, x, ctx), atol=1e-9, rtol=1e-9)
    if pattern.startswith("causal") and spec.layout == "tokens":
        assert (w.triu(1) == 0).all(), "a causal map weighs a future token"


def test_blocks_without_maps_refuse() -> None:
    for spec in SPECS:
        if not spec.attention_maps:
            m = build(spec, spec.patterns[0])
            x, ctx = inputs(spec, m, spec.patterns[0])
            with pytest.raises(ValueError, match=f"{spec.name} does not return attention maps"):
                m.attention_maps(x, context=ctx)


@dataclasses.dataclass(frozen=True)
class _SelfOnlyConfig(az.MixerConfig):
    pass


@pytest.fixture
def self_only_spec() -> az.MixerSpec:
    """A throwaway mixer that declares only ``noncausal-self``."""

    @az.register_mixer(
        "_test_self_only",
        config=_SelfOnlyConfig,
        family="other",
        complexity="O(T·D)",
        paper=az.Paper("test", 2026, "-"),
        peer="-",
        flops=lambda *a: 0,
    )
    class SelfOnly(az.Mixer):
        def __init__(self, cfg: _SelfOnlyConfig) -> None:
            super().__init__(cfg)
            self.lin = torch.nn.Linear(cfg.d_model, cfg.d_model)

        def mix(self, x: torch.Tensor, context: None, mask: object) -> torch.Tensor:
            return self.lin(x)

    yield az.get_spec("_test_self_only")
    unregister_mixer("_test_self_only")


@pytest.mark.parametrize("pattern", ["causal-self", "noncausal-cross", "causal-cross"])
def test_declared_unsupported_pattern_raises(self_only_spec: az.MixerSpec, pattern: str) -> None:
    causal = pattern.startswith("causal")
    with pytest.raises(
        ValueError, match="_test_self_only does not support .*supported patterns: noncausal-self$"
    ):
        m = az.build_mixer("_test_self_only", d_model=D_MODEL, causal=causal)
        m(torch.randn(2, T, D_MODEL), context=torch.randn(2, 5, D_MODEL))


@pytest.mark.compile
@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_torch_compile_smoke(spec: az.MixerSpec) -> None:
    pattern = "causal-self" if "causal-self" in spec.patterns else spec.patterns[0]
    m = build(spec, pattern)
    x, ctx = inputs(spec, m, pattern)
    compiled = torch.compile(m, dynamic=False)
    want = call(m, x, ctx)
    got = compiled(x) if ctx is None else compiled(x, context=ctx)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
