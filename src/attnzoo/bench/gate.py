"""Correctness gate: every fast ``impl`` of a block against its ``reference`` impl, fwd + bwd.

The benchmark runs this before timing a (block, impl) and refuses to record a timing for a path
that failed in the same run (DESIGN §4). ``attnzoo selfcheck`` prints it for the whole registry.
"""

from __future__ import annotations

import dataclasses

import torch

from attnzoo.registry import build_mixer
from attnzoo.spec import MixerSpec
from attnzoo.testing import example_call, randomise, stream

# token-axis sizes of the gate's inputs: odd, not multiples of the usual chunk (64), window
# (7, 8) or block sizes, so every fast path runs its ragged and padded cases
GATE_SIZES = {"tokens": (77,), "grid2d": (11, 13), "grid3d": (3, 5, 6)}
GATE_CONTEXT_SIZES = {"tokens": (45,), "grid2d": (6, 9), "grid3d": (2, 3, 5)}


@dataclasses.dataclass(frozen=True)
class CheckResult:
    mixer: str
    impl: str
    pattern: str
    max_abs_err: float  # over the output and every parameter/input gradient
    ok: bool
    detail: str = ""


def _fwd_bwd(m: torch.nn.Module, x: torch.Tensor, ctx: torch.Tensor | None) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    c = None if ctx is None else ctx.clone().requires_grad_(True)
    y = m(x) if c is None else m(x, context=c)
    g = torch.Generator().manual_seed(1)
    (y * torch.randn(y.shape, generator=g)).sum().backward()
    # a path that leaves a parameter without a gradient computed zeros for it
    grads = [
        torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in m.parameters()
    ]
    inputs = [x.grad.detach()] + ([] if c is None else [c.grad.detach()])
    return [y.detach(), *inputs, *grads]


def _check_step(
    spec: MixerSpec,
    m: torch.nn.Module,
    x: torch.Tensor,
    want: torch.Tensor,
    atol: float,
    rtol: float,
) -> CheckResult:
    """Streaming: ``step()`` token by token equals the parallel forward (recorded as impl ``step``)."""
    try:
        with torch.no_grad():
            got, _ = stream(m, x)
    except Exception as e:  # recorded as a failed check, never hidden
        return CheckResult(spec.name, "step", "causal-self", float("inf"), False, repr(e))
    err = float((got - want).abs().max()) if got.numel() else 0.0
    ok = err <= atol + rtol * float(want.abs().max()) if want.numel() else True
    return CheckResult(spec.name, "step", "causal-self", err, ok)


def _compare(
    got: list[torch.Tensor], want: list[torch.Tensor], atol: float, rtol: float
) -> tuple[float, bool]:
    err, ok = 0.0, True
    for a, b in zip(got, want, strict=True):
        if not b.numel():
            continue
        e = float((a - b).abs().max())
        err = max(err, e)
        ok = ok and e <= atol + rtol * float(b.abs().max())
    return err, ok


def check_mixer(
    spec: MixerSpec,
    *,
    d_model: int = 32,
    length: int | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    seed: int = 0,
) -> list[CheckResult]:
    """Gate every fast path of a block on every supported pattern (fp32, forward and backward).

    Inputs have the spec's layout and context layout at :data:`GATE_SIZES` (``length``
    replaces the token count of a ``tokens`` block, its context's half of it); the reference
    block's constant-initialised weights (zero biases, unit norms, BatchNorm statistics) are
    randomised (:func:`attnzoo.testing.randomise`) and loaded into each fast path. Each output and gradient tensor (parameters, ``x`` and ``context``) must satisfy
    ``max|got - want| <= atol + rtol * max|want|`` (parameter gradients sum over every token, so
    an elementwise relative test would flag fp32 re-association in a differently ordered but
    exact path). The reference itself gets a shape and finiteness check (recorded as such): its
    correctness is the job of its unit and peer tests. A block without ``impl="reference"`` fails.
    """
    if "reference" not in spec.impls:
        return [CheckResult(spec.name, "reference", p, float("inf"), False,
                            f"no impl='reference' (impls: {spec.impls})") for p in spec.patterns]  # fmt: skip
    results: list[CheckResult] = []
    for pattern in spec.patterns:
        causal = pattern.startswith("causal")
        try:
            ref = build_mixer(spec.name, d_model=d_model, causal=causal, impl="reference")
            randomise(ref, seed=seed, std=0.1, constant_only=True)
            g = torch.Generator().manual_seed(seed)
            sizes = dict(GATE_SIZES)
            c_sizes = dict(GATE_CONTEXT_SIZES)
            if length is not None:
                sizes["tokens"], c_sizes["tokens"] = (length,), (max(1, length // 2 + 3),)
            x, ctx = example_call(spec, ref, pattern=pattern, sizes=sizes[spec.layout],
                                  context_sizes=c_sizes[spec.context_layout or spec.layout],
                                  generator=g)  # fmt: skip
            want = _fwd_bwd(ref, x, ctx)
        except Exception as e:  # recorded as a failed check, never hidden
            results.append(
                CheckResult(spec.name, "reference", pattern, float("inf"), False, repr(e))
            )
            continue
        shape = spec.role_info.output_shape(tuple(x.shape), d_model)
        sane = tuple(want[0].shape) == shape and all(bool(torch.isfinite(t).all()) for t in want)
        detail = "" if sane else "output has the wrong shape or non-finite values"
        results.append(CheckResult(spec.name, "reference", pattern, 0.0, sane,
                                   f"{detail} (shape/finite check; reference path)".strip()))  # fmt: skip
        if spec.state != "none" and pattern == "causal-self":
            results.append(_check_step(spec, ref, x, want[0], atol, rtol))
        for impl in spec.fast_impls:
            try:
                m = build_mixer(spec.name, d_model=d_model, causal=causal, impl=impl)
                m.load_state_dict(ref.state_dict())
                m.train(ref.training)
                got = _fwd_bwd(m, x, ctx)
            except Exception as e:  # recorded as a failed check, never hidden
                results.append(CheckResult(spec.name, impl, pattern, float("inf"), False, repr(e)))
                continue
            err, ok = _compare(got, want, atol, rtol)
            results.append(CheckResult(spec.name, impl, pattern, err, ok))
    return results
