"""Test helpers: run a function forward and backward and compare against another."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from torch import Tensor


def fwd_bwd(
    fn: Callable[..., Tensor], inputs: Sequence[Tensor], grad: Tensor | None = None
) -> list[Tensor]:
    """Output and input gradients of ``fn(*inputs)`` for a fixed random output gradient."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    # randn(shape), not randn_like: randn_like follows the output's strides, so two paths that
    # return the same values in different memory layouts would get different gradients
    g = grad if grad is not None else torch.randn(out.shape, dtype=out.dtype, device=out.device)
    (out * g).sum().backward()
    return [out.detach()] + [t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves]


def assert_all_close(
    got: Sequence[Tensor], want: Sequence[Tensor], atol: float = 2e-5, rtol: float = 1e-5
) -> None:
    names = ["output"] + [f"grad[{i}]" for i in range(len(got) - 1)]
    for name, a, b in zip(names, got, want, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


def spy(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[tuple]:
    """Record the calls of ``module.name`` (which still runs) for the rest of the test."""
    calls: list[tuple] = []
    real = getattr(module, name)

    def wrapper(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def assert_same_module(
    ours: torch.nn.Module,
    theirs: torch.nn.Module,
    x: Tensor,
    f_ours: Callable[[Tensor], Tensor],
    f_theirs: Callable[[Tensor], Tensor],
    atol: float = 2e-5,
    rtol: float = 2e-5,
) -> None:
    """Equal outputs, input gradients and same-named parameter gradients (each parameter
    gradient is a sum over tokens: its tolerance scales with its magnitude)."""
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    ya, yb = f_ours(xa), f_theirs(xb)
    torch.testing.assert_close(ya, yb, atol=atol, rtol=rtol)
    g = torch.randn(ya.shape, dtype=ya.dtype)
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=atol, rtol=rtol)
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        want = theirs_params[name].grad
        scaled = atol * max(1.0, want.abs().max().item())
        torch.testing.assert_close(p.grad, want, atol=scaled, rtol=rtol, msg=name)


def assert_paths_equal(
    fast: torch.nn.Module, ref: torch.nn.Module, x: Tensor, atol: float, rtol: float
) -> None:
    """Two paths of one block with the same weights: equal outputs, input gradients and
    parameter gradients (the output weighted by a fixed ``sin`` pattern)."""
    outs = []
    for m in (fast, ref):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        (y * torch.sin(torch.arange(y.numel(), dtype=y.dtype)).view(y.shape)).sum().backward()
        outs.append([y, xi.grad, *(p.grad for p in m.parameters())])
    for a, c in zip(*outs, strict=True):
        torch.testing.assert_close(a, c, atol=atol, rtol=rtol)
