"""Every registered block on ``--device``, compared with the same block on the CPU.

- fp32, every impl the block has (but ``native``, the CPU kernels, which must refuse another
  device by name): outputs and the gradients of the input and of every parameter equal the
  CPU's ``reference`` impl within ``FP32`` (TF32 off).
- bf16: the block cast to bfloat16 on the device runs, returns bf16, finite, within twice the
  tolerance its spec declares for bf16 on the CPU (``MixerSpec.low_precision``) of the CPU's
  fp32 output on the same rounded weights and input; or refuses as declared.
- The speed bench's memory path: ``peak_memory_bytes`` on the device counts a known allocation.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import attnzoo as az
from attnzoo.bench.measure import peak_memory_bytes
from attnzoo.testing import randomise
from tests.contract.inputs import call, inputs

FP32 = (1e-4, 1e-4)  # atol, rtol: as the bench's gate, max|got - want| <= atol + rtol max|want|
BF16_SLACK = 2.0  # times the CPU tolerance the spec declares for bfloat16
CASES = [(s, p) for s in az.list_mixers() for p in s.patterns]
IDS = [f"{s.name}-{p}" for s, p in CASES]


def build(spec: az.MixerSpec, pattern: str, impl: str | None = None) -> nn.Module:
    """The block with weights away from their initialisation, the same on every call; eval mode
    (BatchNorm uses its running statistics: the same on every device)."""
    torch.manual_seed(0)
    kw = {} if impl is None else {"impl": impl}
    m = az.build_mixer(spec.name, d_model=32, causal=pattern.startswith("causal"), **kw)
    return randomise(m, seed=1, std=0.1, constant_only=True).eval()  # as the bench gate


def example(spec: az.MixerSpec, m: nn.Module, pattern: str):
    torch.manual_seed(2)
    return inputs(spec, m, pattern)


def run(m: nn.Module, x: torch.Tensor, ctx: torch.Tensor | None):
    """Output and the gradients (input, then parameters by name) of ``sum(out * w)``."""
    x = x.detach().requires_grad_(True)
    out = call(m, x, ctx)
    w = torch.linspace(-1, 1, out.numel(), device=out.device, dtype=out.dtype).view_as(out)
    (out * w).sum().backward()
    grads = {"x": x.grad}
    grads.update({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    return out.detach(), grads


def close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """The bench gate's criterion (``attnzoo.bench.gate``): the error against the scale of
    ``want`` (parameter gradients sum over every token, so elementwise tolerances mislead)."""
    atol, rtol = FP32
    err = float((got.cpu() - want).abs().max()) if want.numel() else 0.0
    bound = atol + rtol * float(want.abs().max()) if want.numel() else 0.0
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"


def device_impls(spec: az.MixerSpec) -> list[str]:
    return [i for i in spec.impls if i != "native"]


@pytest.mark.parametrize(("spec", "pattern"), CASES, ids=IDS)
def test_fp32_matches_cpu_forward_and_backward(
    spec: az.MixerSpec, pattern: str, device: torch.device
) -> None:
    ref = build(spec, pattern, "reference" if "reference" in spec.impls else None)
    x, ctx = example(spec, ref, pattern)
    want, want_grads = run(ref, x, ctx)
    for impl in device_impls(spec) or [None]:
        m = build(spec, pattern, impl).to(device)
        got, grads = run(m, x.to(device), None if ctx is None else ctx.to(device))
        close(got, want, f"{spec.name} impl={impl} output")
        for name, gw in want_grads.items():
            close(grads[name], gw, f"{spec.name} impl={impl} grad {name}")


NATIVE = [(s, s.patterns[0]) for s in az.list_mixers() if "native" in s.impls]


@pytest.mark.parametrize(("spec", "pattern"), NATIVE, ids=[s.name for s, _ in NATIVE])
def test_native_refuses_another_device_by_name(
    spec: az.MixerSpec, pattern: str, device: torch.device
) -> None:
    if device.type == "cpu":
        pytest.skip("the native kernels are the CPU's")  # --device cpu checks the tests only
    m = build(spec, pattern, "native").to(device)
    x, ctx = example(spec, m, pattern)
    with pytest.raises((ValueError, TypeError), match="native"):
        call(m, x.to(device), None if ctx is None else ctx.to(device))


@pytest.mark.parametrize(("spec", "pattern"), CASES, ids=IDS)
def test_bf16_runs_close_to_fp32(spec: az.MixerSpec, pattern: str, device: torch.device) -> None:
    """bf16 on the device against fp32 on the CPU holding the same rounded weights and input,
    within ``BF16_SLACK`` times the CPU tolerance the spec declares (``low_precision``): another
    device accumulates in another order. A declared refusal must be the declared error."""
    declared = spec.low_precision.bfloat16
    low = build(spec, pattern).to(torch.bfloat16)
    ref = copy.deepcopy(low).float()  # fp32 on the CPU, the rounded weights
    x, ctx = example(spec, ref, pattern)
    x = x.to(torch.bfloat16)
    ctx = None if ctx is None else ctx.to(torch.bfloat16)

    def on(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device)

    if isinstance(declared, str):
        with pytest.raises(TypeError, match="bfloat16"):
            call(low.to(device), on(x), on(ctx))
        return
    with torch.no_grad():
        want = call(ref, x.float(), None if ctx is None else ctx.float())
        got = call(low.to(device), on(x), on(ctx))
    assert got.dtype == torch.bfloat16, f"{spec.name}: bf16 in, {got.dtype} out"
    got = got.float().cpu()
    assert torch.isfinite(got).all(), f"{spec.name}: non-finite bf16 output"
    err, scale = float((got - want).abs().max()), float(want.abs().max())
    bound = BF16_SLACK * (declared.atol + declared.rtol * scale)
    assert err <= bound, f"{spec.name}: bf16 error {err:.3g} > {bound:.3g} (scale {scale:.3g})"


def test_peak_memory_counts_a_known_allocation(device: torch.device) -> None:
    n = 1 << 20  # 4 MiB of float32, kept alive past the call's end
    kept: list[torch.Tensor] = []
    got = peak_memory_bytes(lambda: kept.append(torch.ones(n, device=device)), device)
    assert 4 * n <= got <= 4 * n + (1 << 16), got
