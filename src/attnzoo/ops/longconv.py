"""Long convolution of a signal with a per-channel filter as long as the signal, over 1, 2 or 3
axes (Hyena's long convolution): ``reference`` (a direct convolution) and ``fft``.

On channels-last ``u [B, *S, C]`` and a filter ``h [*K, C]`` (one filter per channel), for every
position ``p`` of the grid ``S`` (axes ``a``, sides ``n_a``)::

    causal=True   K = S:       y[p] = sum_{q <= p} h[p - q] u[q] + skip * u[p]
    causal=False  K = 2S - 1:  y[p] = sum_q h[p - q + S - 1] u[q] + skip * u[p]

where ``q <= p`` holds on every axis. ``causal=True`` is the one-sided filter of Hyena (Poli et
al. 2023): on tokens the causal convolution; on grids the filter is indexed from lag 0 on every
axis (``h`` has the grid's sides), so each output sees the one orthant of the grid above and to
the left of it, which is the convention of the official Hyena N-D code (``fftconv2d`` crops the
first ``h x w`` outputs of a filter of the grid's size). ``causal=False`` is the centred
two-sided filter: index ``n_a - 1`` is lag 0, every lag in ``(-n_a, n_a)`` has its own tap. The
``skip`` term is Hyena's ``D`` (``fftconv``'s ``u * D``), part of the op as in the official code.

- ``reference``: ``F.conv1d/2d/3d`` with ``groups=C`` on the zero-padded signal and the flipped
  filter (a convolution is a cross-correlation with the flipped kernel): the direct ``O(N^2)``
  sum, obviously correct.
- ``fft`` (``auto``): ``rfftn`` of signal and filter zero-padded to twice each side, product,
  ``irfftn``, crop. Twice the side is enough for both supports: the circular convolution then
  holds the linear one on every index kept, so nothing wraps around.

Scaling: the result equals the direct convolution exactly (up to rounding) in both paths. The
official 1-D ``fftconv`` computes ``irfft(rfft(u, 2L) * rfft(k, 2L) / 2L, norm="forward")``,
where the ``/ 2L`` and ``norm="forward"`` cancel (also the true convolution). The official
Hyena N-D ``fftconv2d`` divides ``rfft2(k)`` by ``2L`` too but inverts with ``irfft2``'s default
``norm="backward"``, which already divides by ``(2L)^2``: its output is the true convolution
divided by ``2L`` (plus ``D u``, unscaled). That is a quirk we depart from: here a filter means
the same on every axis count, and a learned filter absorbs any constant factor.

Low precision: bfloat16 / float16 signals are convolved in float32 (``torch.fft`` has no CPU
half kernels, and a direct sum of ``N`` products rounded in bfloat16 would drift) and the
result is cast back, as the official Hyena N-D code does (``u.float()``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IMPLS = ("auto", "reference", "fft")
OP = "long_conv"
# real FLOPs of one real-input FFT (or its inverse) of P points, per P·log2(P): half the
# classic 5·N·log2(N) of a complex radix-2 FFT
FFT_CONSTANT = 2.5


def long_conv(
    u: Tensor, h: Tensor, *, causal: bool, skip: Tensor | None = None, impl: str = "auto"
) -> Tensor:
    """Per-channel long convolution of ``u`` with ``h`` (see the module docstring).

    Args:
        u: the signal, channels last.
        h: one filter per channel: the grid's sides if ``causal`` (lag 0 at index 0), else
            ``2 n - 1`` per side (lag 0 at index ``n - 1``).
        causal: one-sided (causal / one-orthant) or centred two-sided filter.
        skip: ``D`` of ``y + D * u``, or ``None``.
        impl: ``"auto"`` (``fft``), ``"reference"`` or ``"fft"``.

    Shapes:
        u ``[B, *S, C]`` (1 to 3 axes ``S``), h ``[*K, C]``, skip ``[C]`` -> ``[B, *S, C]``
    """
    _check(u, h, skip, causal, impl)
    work = u.dtype if u.dtype in (torch.float32, torch.float64) else torch.float32
    x, k = u.to(work), h.to(work)
    if u.numel() == 0:
        y = x * 0
    elif impl == "reference":
        y = _reference(x, k, causal)
    else:
        y = _fft(x, k, causal)
    if skip is not None:
        y = y + x * skip.to(work)
    return y.to(u.dtype)


def _check(u: Tensor, h: Tensor, skip: Tensor | None, causal: bool, impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"{OP}: impl must be one of {', '.join(map(repr, IMPLS))}, got {impl!r}")
    if not isinstance(causal, bool):
        raise TypeError(f"{OP}: causal must be a bool, got {causal!r}")
    for name, t in (("u", u), ("h", h), ("skip", skip)):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{OP}: {name} must be a floating-point tensor, got dtype {t.dtype}")
    if not 3 <= u.dim() <= 5:
        raise ValueError(
            f"{OP}: u must be [B, *S, C] with 1 to 3 axes S, got shape {tuple(u.shape)}"
        )
    sizes, C = tuple(u.shape[1:-1]), u.shape[-1]
    want = tuple(sizes) if causal else tuple(max(2 * n - 1, 0) for n in sizes)
    if tuple(h.shape) != (*want, C):
        side = "the grid's sides" if causal else "2 n - 1 per side n (centred)"
        raise ValueError(
            f"{OP}: h must be [*K, C] = {(*want, C)} ({side}, causal={causal}) for u of shape "
            f"{tuple(u.shape)}, got {tuple(h.shape)}"
        )
    if skip is not None and tuple(skip.shape) != (C,):
        raise ValueError(f"{OP}: skip must be [C] = ({C},), got {tuple(skip.shape)}")
    dtypes = {t.dtype for t in (u, h, skip) if t is not None}
    if len(dtypes) > 1:
        raise TypeError(f"{OP}: u, h and skip must share a dtype, got {sorted(map(str, dtypes))}")


def _reference(u: Tensor, h: Tensor, causal: bool) -> Tensor:
    """``F.convNd`` (cross-correlation) with the flipped filter on the zero-padded signal."""
    d, C = u.dim() - 2, u.shape[-1]
    sizes = u.shape[1:-1]
    axes = tuple(range(1, d + 1))
    weight = h.movedim(-1, 0).flip(axes)[:, None]  # [C, 1, *K]
    pad: list[int] = []  # F.pad: the last axis first
    for n in reversed(sizes):
        pad += [n - 1, 0 if causal else n - 1]
    x = F.pad(u.movedim(-1, 1), pad)  # [B, C, *(S + pad)]
    y = (F.conv1d, F.conv2d, F.conv3d)[d - 1](x, weight, groups=C)  # [B, C, *S]
    return y.movedim(1, -1)


def _fft(u: Tensor, h: Tensor, causal: bool) -> Tensor:
    """``irfftn(rfftn(u) * rfftn(h))`` at twice each side, cropped to the grid."""
    d = u.dim() - 2
    sizes = u.shape[1:-1]
    dims = tuple(range(-d, 0))
    s = [2 * n for n in sizes]
    # channels first: the transformed axes last (torch.export traces this layout at any size)
    uf = torch.fft.rfftn(u.movedim(-1, 1), s=s, dim=dims)  # [B, C, *F]
    hf = torch.fft.rfftn(h.movedim(-1, 0), s=s, dim=dims)  # [C, *F]
    y = torch.fft.irfftn(uf * hf, s=s, dim=dims)  # [B, C, *2S]
    for axis, n in zip(dims, sizes, strict=True):
        y = y.narrow(axis, 0 if causal else n - 1, n)
    return y.movedim(1, -1)  # [B, *S, C]


def long_conv_matrix(h: Tensor, sizes: tuple[int, ...], *, causal: bool) -> Tensor:
    """The convolution as a matrix over the row-major flattened grid: ``M[c, p, q]`` is the
    weight of input position ``q`` in output ``p`` (``h[p - q]``, zero where ``q > p`` on some
    axis if ``causal``), so ``long_conv(u, h) = M @ u`` per channel. ``O(N^2)`` memory.

    Shapes:
        h ``[*K, C]`` (as :func:`long_conv`), sizes ``S`` -> ``[C, N, N]`` with ``N = prod(S)``
    """
    grids = torch.meshgrid(*(torch.arange(n, device=h.device) for n in sizes), indexing="ij")
    coords = torch.stack([g.reshape(-1) for g in grids], -1)  # [N, d]
    lag = coords[:, None, :] - coords[None, :, :]  # [N, N, d]: p - q
    if not causal:
        lag = lag + torch.tensor(sizes, device=h.device) - 1
    valid = (lag >= 0).all(-1)  # [N, N]
    index = lag.clamp(min=0).unbind(-1)
    m = h[index] * valid[..., None].to(h.dtype)  # [N, N, C]
    return m.movedim(-1, 0)


def long_conv_flops(batch: int, channels: int, tokens: int, axes: int) -> int:
    """FLOPs of one ``fft``-path call on ``batch`` signals of ``channels`` channels with
    ``tokens`` positions over ``axes`` axes, skip term included: each signal is transformed
    forward and back and each channel's filter once (``P = 2^axes * tokens`` points; a real FFT
    counted as ``FFT_CONSTANT * P * log2 P``), the spectra multiplied (``P/2`` complex bins, 6
    FLOPs each) and ``D u`` added (2 FLOPs per value). Depends on the grid only through
    ``tokens``."""
    if tokens <= 0:
        return 0
    P = (2**axes) * tokens
    fft = FFT_CONSTANT * P * math.log2(P)
    per_signal = 2 * fft + 6 * (P // 2) + 2 * tokens
    return int(batch * channels * per_signal + channels * fft)
