"""Correctness gate: every fast ``impl`` of a mixer against its ``reference`` impl, fwd + bwd.

The benchmark runs this before timing a (mixer, impl) and refuses to record a timing for a path
that failed in the same run (DESIGN §4). ``attnzoo selfcheck`` prints it for the whole registry.
"""

from __future__ import annotations

import dataclasses
import typing

import torch

from attnzoo.registry import MixerSpec, build_mixer


@dataclasses.dataclass(frozen=True)
class CheckResult:
    mixer: str
    impl: str
    pattern: str
    max_abs_err: float  # over the output and every parameter/input gradient
    ok: bool
    detail: str = ""


def impl_choices(spec: MixerSpec) -> tuple[str, ...]:
    """The ``impl`` values a mixer's config accepts (empty when it has a single path)."""
    hints = typing.get_type_hints(spec.config)
    tp = hints.get("impl")
    if tp is None or typing.get_origin(tp) is not typing.Literal:
        return ()
    return tuple(typing.get_args(tp))


def _make_inputs(
    spec: MixerSpec, d_model: int, length: int, pattern: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(0)
    if spec.dims == 1:
        x = torch.randn(2, length, d_model, generator=g)
    else:
        x = torch.randn(2, length, length, d_model, generator=g)
    ctx = (
        torch.randn(2, max(1, length // 2 + 3), d_model, generator=g)
        if pattern.endswith("cross")
        else None
    )
    return x, ctx


def _fwd_bwd(m: torch.nn.Module, x: torch.Tensor, ctx: torch.Tensor | None) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    y = m(x, context=ctx) if ctx is not None else m(x)
    g = torch.Generator().manual_seed(1)
    (y * torch.randn(y.shape, generator=g)).sum().backward()
    grads = [p.grad.detach().clone() for p in m.parameters() if p.grad is not None]
    return [y.detach(), x.grad.detach()] + grads


def _sane(
    spec: MixerSpec, pattern: str, impl: str, out: list[torch.Tensor], x: torch.Tensor
) -> CheckResult:
    """The gate of a path with nothing faster to compare: right shape, finite output and gradients."""
    ok = out[0].shape == x.shape and all(bool(torch.isfinite(t).all()) for t in out)
    detail = "" if ok else "output has the wrong shape or non-finite values"
    return CheckResult(
        spec.name, impl, pattern, 0.0, ok, detail + " (shape/finite check; reference path)"
    )


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
            state = m.init_state(batch_size=x.shape[0])
            outs = []
            for t in range(x.shape[1]):
                y_t, state = m.step(x[:, t], state)
                outs.append(y_t)
            got = torch.stack(outs, dim=1)
    except Exception as e:  # recorded as a failed check, never hidden
        return CheckResult(spec.name, "step", "causal-self", float("inf"), False, repr(e))
    err = float((got - want).abs().max()) if got.numel() else 0.0
    return CheckResult(
        spec.name, "step", "causal-self", err, torch.allclose(got, want, atol=atol, rtol=rtol)
    )


def check_mixer(
    spec: MixerSpec, *, d_model: int = 32, length: int = 37, atol: float = 1e-4, rtol: float = 1e-4
) -> list[CheckResult]:
    """Gate every path of a mixer on every supported pattern (fp32, forward and backward).

    Each fast ``impl`` is compared with ``impl="reference"`` (or, for a mixer whose ``impl``
    choices have no ``reference``, the first explicit one) on the same weights and inputs: each
    output and gradient tensor must satisfy ``max|got - want| <= atol + rtol * max|want|``
    (gradients of parameters are sums over every token, so an elementwise relative test would
    flag fp32 re-association in a differently ordered but exact path). The base path itself (or
    the single path of a mixer without ``impl``, recorded as ``default``) gets a shape and
    finiteness check; its correctness is the job of its unit and peer tests.
    """
    choices = impl_choices(spec)
    explicit = [c for c in choices if c != "auto"]
    results: list[CheckResult] = []
    for pattern in spec.patterns:
        causal = pattern.startswith("causal")
        x, ctx = _make_inputs(spec, d_model, length, pattern)
        base_impl = (
            "reference" if "reference" in choices else (explicit[0] if explicit else "default")
        )
        kwargs = {"impl": base_impl} if explicit else {}
        try:
            ref = build_mixer(spec.name, d_model=d_model, causal=causal, **kwargs)
            want = _fwd_bwd(ref, x, ctx)
        except Exception as e:  # recorded as a failed check, never hidden
            results.append(CheckResult(spec.name, base_impl, pattern, float("inf"), False, repr(e)))
            continue
        results.append(_sane(spec, pattern, base_impl, want, x))
        if spec.state != "none" and pattern == "causal-self":
            results.append(_check_step(spec, ref, x, want[0], atol, rtol))
        for impl in choices:
            if impl in (base_impl, "auto"):
                continue
            try:
                m = build_mixer(spec.name, d_model=d_model, causal=causal, impl=impl)
                m.load_state_dict(ref.state_dict())
                got = _fwd_bwd(m, x, ctx)
            except Exception as e:  # recorded as a failed check, never hidden
                results.append(CheckResult(spec.name, impl, pattern, float("inf"), False, repr(e)))
                continue
            err = max(
                float((a - b).abs().max()) if a.numel() else 0.0
                for a, b in zip(got, want, strict=True)
            )
            ok = all(
                float((a - b).abs().max()) <= atol + rtol * float(b.abs().max())
                if b.numel()
                else True
                for a, b in zip(got, want, strict=True)
            )
            results.append(CheckResult(spec.name, impl, pattern, err, ok))
    return results
