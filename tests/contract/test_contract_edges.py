"""Contract tests at the edges of a call, for every registered block of every layout and role:
empty inputs, a BatchNorm that would see one value, inputs of another dtype than the block's,
streaming states of the wrong shape, the masks each pattern takes, and described config keys."""

from __future__ import annotations

import dataclasses
import itertools
import re

import pytest
import torch
from torch import nn

import attnzoo as az
from attnzoo.ops.masks import Mask
from tests.contract.inputs import D_MODEL, all_specs, build, call, expected_shape, ids, inputs

SPECS = all_specs()
PAIRS = [(s, p) for s in SPECS for p in s.patterns]
STREAMING = [s for s in SPECS if s.state != "none"]


def _empty_sizes(spec: az.MixerSpec) -> list[tuple[int, tuple[int, ...]]]:
    """``(batch, sizes)`` with one token axis of size 0 (each in turn), and with no samples."""
    rank = len(az.LAYOUTS[spec.layout].axes)
    one_empty = [tuple(0 if i == j else 5 for i in range(rank)) for j in range(rank)]
    return [(2, s) for s in one_empty] + [(0, (5,) * rank)]


EMPTY = [(s, p, b, sz) for s, p in PAIRS for b, sz in _empty_sizes(s)]


@pytest.mark.parametrize(
    "spec,pattern,batch,sizes",
    EMPTY,
    ids=lambda v: ids(v) if not isinstance(v, tuple) else "x".join(map(str, v)),
)
def test_empty_input_gives_an_empty_output(
    spec: az.MixerSpec, pattern: str, batch: int, sizes: tuple[int, ...]
) -> None:
    """A grid with a side of 0 (or a sequence of 0 tokens, or no samples) gives an output of the
    role's shape, forward and backward: every parameter and input gets a finite gradient."""
    m = build(spec, pattern)
    x, ctx = inputs(spec, m, pattern)
    x = az.LAYOUTS[spec.layout].example(batch, sizes, m.d_model).requires_grad_(True)
    if ctx is not None:
        ctx = ctx[:batch].detach().requires_grad_(True)
    y = call(m, x, ctx)
    assert y.shape == expected_shape(spec, x, m) and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    (y * torch.randn(y.shape)).sum().backward()
    for name, t in [("x", x), ("context", ctx), *m.named_parameters()]:
        if t is not None:
            assert t.grad is not None, f"{spec.name}: {name} got no gradient on {sizes}"
            assert t.grad.shape == t.shape and torch.isfinite(t.grad).all()


def _batch_statistics(m: nn.Module) -> bool:
    return any(
        isinstance(b, nn.modules.batchnorm._BatchNorm) and (b.training or b.running_mean is None)
        for b in m.modules()
    )


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_one_value_per_channel_names_batchnorm(spec: az.MixerSpec) -> None:
    """Batch 1 of one token in training mode: a block whose BatchNorm uses batch statistics
    raises a ValueError naming BatchNorm, the block, the shape and the ways out (and eval mode
    works); any other block works or raises a ValueError naming itself."""
    pattern = spec.patterns[0]
    m = build(spec, pattern).train()
    rank = len(az.LAYOUTS[spec.layout].axes)
    x, ctx = inputs(spec, m, pattern)
    x = az.LAYOUTS[spec.layout].example(1, (1,) * rank, m.d_model)
    ctx = None if ctx is None else ctx[:1]
    if _batch_statistics(m):
        shape = re.escape(str(tuple(x.shape)))
        with pytest.raises(ValueError, match=rf"^{spec.name}: its BatchNorm '[\w.]+' .*{shape}.*"
                           r"more than one sample.*more than one token.*eval mode"):  # fmt: skip
            call(m, x, ctx)
        y = call(m.eval(), x, ctx)
    else:
        try:
            y = call(m, x, ctx)
        except ValueError as e:
            assert spec.name in str(e) and "BatchNorm" not in str(e), str(e)
            return
    assert y.shape == expected_shape(spec, x, m) and torch.isfinite(y).all()


@pytest.mark.parametrize("spec,pattern", PAIRS, ids=ids)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_another_dtype_than_the_parameters_names_both(
    spec: az.MixerSpec, pattern: str, dtype: torch.dtype
) -> None:
    """``x`` (or ``context``) of another dtype than the float32 block: a TypeError naming both
    dtypes and the ``.to()`` calls that fix it; under autocast the ops cast for themselves."""
    m = build(spec, pattern)
    x, ctx = inputs(spec, m, pattern)
    fix = rf"call mixer\.to\({dtype}\) or {{}}\.to\(torch\.float32\)$"
    want = rf"^{spec.name}: {{}} is {dtype} but the mixer's parameters are torch\.float32; "
    with pytest.raises(TypeError, match=want.format("x") + fix.format("x")):
        call(m, x.to(dtype), ctx)
    if ctx is not None:
        with pytest.raises(TypeError, match=want.format("context") + fix.format("context")):
            call(m, x, ctx.to(dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m.check_input(x.to(torch.bfloat16), None if ctx is None else ctx.to(torch.bfloat16))


@pytest.mark.parametrize("spec", STREAMING, ids=ids)
def test_step_with_a_state_of_another_shape_names_the_field(spec: az.MixerSpec) -> None:
    """A state of the right type whose tensors have another width raises a ValueError naming
    the field, its shape and the expected shape; a state from a wider mixer too."""
    m = build(spec, "causal-self")
    x_t = torch.randn(2, D_MODEL)
    state = m.init_state(2)
    _, state = m.step(x_t, state)  # a KV cache has grown a token
    for f in dataclasses.fields(state):
        t = getattr(state, f.name)
        if not isinstance(t, torch.Tensor):
            continue
        bad = t.new_zeros(*t.shape[:-1], t.shape[-1] + 1)
        shape = re.escape(str(tuple(bad.shape)))
        with pytest.raises(
            ValueError, match=rf"^{spec.name}\.step: state\.{f.name} has shape {shape}, expected \("
        ):
            m.step(x_t, dataclasses.replace(state, **{f.name: bad}))
    heads = {"num_heads": 1} if "num_heads" in spec.config.field_names() else {}
    wide = build(spec, "causal-self", d_model=2 * D_MODEL, **heads)
    with pytest.raises(ValueError, match=rf"^{spec.name}\.step: state\.\w+ has shape"):
        m.step(x_t, wide.init_state(2))


def _masks() -> list[Mask]:
    """One mask of every combination the Mask class allows (of each kind, with documents)."""
    out = []
    for causal, window, prefix, block, docs, glob, question, blockwise, drop, buckets in itertools.product(
        (False, True), (None, 3), (None, 2), (None, 2), (None, (3, 4)), (None, 1), (False, True),
        (False, True), (None, (1,)), (None, (0, 1, 0, 1, 0, 1, 0)),
    ):  # fmt: skip
        try:
            out.append(Mask(causal=causal, window=window, prefix=prefix, block=block,
                            documents=docs, global_tokens=glob, shares_question=question,
                            last_sees_all=blockwise, drop_k=drop, buckets=buckets))  # fmt: skip
        except ValueError:
            continue
    return out


@pytest.mark.parametrize("spec,pattern", PAIRS, ids=ids)
def test_masks_for_a_pattern_are_those_the_block_accepts(spec: az.MixerSpec, pattern: str) -> None:
    """``spec.masks_for(pattern)`` (what ``attnzoo info`` lists) is exactly the union of the
    kinds of the masks ``Mixer.check_mask`` accepts in that pattern."""
    m = build(spec, pattern)
    accepted: set[str] = set()
    for mask in _masks():
        try:
            m.check_mask(mask)
        except ValueError:
            continue
        accepted.update(mask.kinds)
    assert set(spec.masks_for(pattern)) == accepted
    assert len(spec.masks_for(pattern)) == len(set(spec.masks_for(pattern)))


def test_masks_for_leaves_out_the_other_causality() -> None:
    spec = az.get_spec("lightning")  # declares full and causal, streams causal-self only
    assert spec.masks == ("full", "causal") and spec.masks_for("causal-self") == ("causal",)
    assert spec.masks_for("noncausal-self") == ()


@pytest.mark.parametrize("spec", SPECS, ids=ids)
def test_every_config_key_is_described(spec: az.MixerSpec) -> None:
    """Every config field has a type, a default (or ``required``) and a one-line description
    from an ``Attributes:`` section (what ``attnzoo info`` shows)."""
    fields = spec.config.describe()
    assert [f.name for f in fields] == spec.config.field_names()
    for f in fields:
        assert f.description.strip(), f"{spec.name}: config key {f.name!r} has no description"
        assert "\n" not in f.description and "``" not in f.description
        assert f.type and f.default
