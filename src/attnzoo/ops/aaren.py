"""Aaren's many-to-many attention: one query's causal softmax over every prefix of a sequence.

``o_t = sum_{i<=t} softmax_i(s_{<=t}) v_i`` with one score ``s_i`` per token and head (Aaren uses
``s_i = q . k_i`` for a learned, input-independent query ``q``). Every prefix is summarised by a
triple ``(m, u, w)``: a running max ``m``, the normaliser ``u = sum_i exp(s_i - m)`` and the
numerator ``w = sum_i exp(s_i - m) v_i``; then ``o = w / u``. A token is the leaf ``(s_i, 1, v_i)``
and two adjacent spans ``a`` (earlier) and ``b`` (later) merge associatively:

    m = max(m_a, m_b),  u = u_a e^{m_a - m} + u_b e^{m_b - m},  w = w_a e^{m_a - m} + w_b e^{m_b - m}

Every exponent is ``<= 0`` and ``u >= 1`` once a token is seen, so large ``|s|`` stays finite.

- ``reference`` materialises the ``[B, H, T, T]`` causally masked softmax: the spec.
- ``scan`` is a Hillis–Steele inclusive prefix scan: ``ceil(log2 T)`` vectorised steps, step
  ``d`` merging position ``t`` with ``t - d``. ``O(T log T)`` work, ``O(log T)`` depth.
- ``recurrent`` folds tokens one at a time with :func:`aaren_update`, the ``O(1)``-state form
  that streaming (``Mixer.step``) uses. ``O(T)`` work, ``T`` sequential steps.

Feng et al., "Attention as an RNN", 2024, https://arxiv.org/abs/2405.13956 (no official code; an
unofficial TensorFlow implementation is https://github.com/claCase/Attention-as-RNN).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from attnzoo.ops.common import check_impl

IMPLS = ("auto", "reference", "scan", "recurrent")
OP = "aaren_scan"


def aaren_scan(s: Tensor, v: Tensor, *, impl: str = "auto") -> Tensor:
    """Causal softmax attention of one query per head over each prefix.

    Args:
        s: scores, e.g. ``scale * q . k_i`` for a per-head query ``q``.
        v: values.
        impl: ``"auto"`` (``scan``), ``"reference"``, ``"scan"`` or ``"recurrent"``.

    Shapes:
        s ``[B, T, H]``, v ``[B, T, H, V]`` -> ``[B, T, H, V]``
    """
    check_impl(OP, impl, IMPLS)
    check_scores_values(OP, s, v)
    if s.shape[1] == 0:
        return torch.zeros_like(v)
    if impl == "reference":
        return _reference(s, v)
    if impl == "recurrent":
        return _recurrent(s, v)
    return _scan(s, v)


def check_scores_values(op: str, s: Tensor, v: Tensor) -> None:
    """``s [B, T, H]`` and ``v [B, T, H, V]``: floating point, one dtype and device, matching."""
    for name, t, rank, layout in (("s", s, 3, "[B, T, H]"), ("v", v, 4, "[B, T, H, V]")):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != rank:
            raise ValueError(f"{op}: {name} must have {rank} dims {layout}, got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got dtype {t.dtype}")
    if s.shape != v.shape[:3]:
        raise ValueError(
            f"{op}: s [B, T, H] must match the first three dims of v [B, T, H, V]; "
            f"got s {tuple(s.shape)} and v {tuple(v.shape)}"
        )
    if s.dtype != v.dtype:
        raise TypeError(f"{op}: s and v must share a dtype, got {s.dtype} and {v.dtype}")
    if s.device != v.device:
        raise ValueError(f"{op}: s and v must be on one device, got {s.device} and {v.device}")


def _reference(s: Tensor, v: Tensor) -> Tensor:
    T = s.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=s.device).tril()  # [T (query), T (key)]
    scores = rearrange(s, "b i h -> b h 1 i").expand(-1, -1, T, -1)  # [B, H, T, T]
    p = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)  # row t: keys i <= t
    return torch.einsum("bhti,bihv->bthv", p, v)  # [B, T, H, V]


def combine(
    a: tuple[Tensor, Tensor, Tensor], b: tuple[Tensor, Tensor, Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """Merge the summaries ``(m, u, w)`` of an earlier span ``a`` and the span ``b`` after it.

    Shapes:
        m ``[...]``, u ``[...]``, w ``[..., V]`` in each of ``a``, ``b`` and the result.
    """
    m_a, u_a, w_a = a
    m_b, u_b, w_b = b
    m = torch.maximum(m_a, m_b)
    c_a = torch.exp(m_a - m)  # <= 1
    c_b = torch.exp(m_b - m)  # <= 1
    return m, u_a * c_a + u_b * c_b, w_a * c_a[..., None] + w_b * c_b[..., None]


def _scan(s: Tensor, v: Tensor) -> Tensor:
    T = s.shape[1]
    m, u, w = s, torch.ones_like(s), v  # leaves (s_i, 1, v_i): [B, T, H], [B, T, H], [B, T, H, V]
    d = 1
    while d < T:
        # position t >= d absorbs the span ending at t - d, which starts where t's span starts - d
        m_new, u_new, w_new = combine(
            (m[:, :-d], u[:, :-d], w[:, :-d]), (m[:, d:], u[:, d:], w[:, d:])
        )
        m = torch.cat([m[:, :d], m_new], dim=1)
        u = torch.cat([u[:, :d], u_new], dim=1)
        w = torch.cat([w[:, :d], w_new], dim=1)
        d *= 2
    return w / u[..., None]  # [B, T, H, V]


def empty_state(
    batch: int, heads: int, dim_v: int, *, device: torch.device | str | None, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """The identity of :func:`combine` (an empty prefix): ``m = -inf``, ``u = 0``, ``w = 0``.

    Shapes:
        returns m ``[B, H]``, u ``[B, H]``, w ``[B, H, V]``
    """
    m = torch.full((batch, heads), float("-inf"), device=device, dtype=dtype)
    u = torch.zeros(batch, heads, device=device, dtype=dtype)
    return m, u, torch.zeros(batch, heads, dim_v, device=device, dtype=dtype)


def aaren_update(
    state: tuple[Tensor, Tensor, Tensor], s_t: Tensor, v_t: Tensor
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Append one token to a prefix summary; return its output and the new summary.

    Shapes:
        state ``(m [B, H], u [B, H], w [B, H, V])``, s_t ``[B, H]``, v_t ``[B, H, V]``
        -> o_t ``[B, H, V]``, state
    """
    m, u, w = combine(state, (s_t, torch.ones_like(s_t), v_t))
    return w / u[..., None], (m, u, w)


def _recurrent(s: Tensor, v: Tensor) -> Tensor:
    B, T, H = s.shape
    state = empty_state(B, H, v.shape[3], device=s.device, dtype=s.dtype)
    outs = []
    for t in range(T):
        o_t, state = aaren_update(state, s[:, t], v[:, t])
        outs.append(o_t)
    return torch.stack(outs, dim=1)  # [B, T, H, V]


def aaren_flops(B: int, T: int, H: int, V: int, impl: str = "auto") -> int:
    """FLOPs of :func:`aaren_scan` (``exp``, ``max`` and divisions count 1 each).

    One :func:`combine` costs ``3 V + 8`` per (batch, head): max, two subtractions, two exps,
    ``u``: 2 multiplies + 1 add, ``w``: ``2 V`` multiplies + ``V`` adds. The scan combines
    ``T - d`` pairs at each step ``d = 1, 2, 4, ... < T``; the recurrence combines ``T`` times;
    the reference does the ``T (T + 1) / 2`` causal pairs (exp, sum, multiply-add over V).
    The final ``w / u`` is ``T V`` divisions.
    """
    check_impl(OP, impl, IMPLS)
    per = 3 * V + 8
    if impl == "reference":
        pairs = T * (T + 1) // 2
        return B * H * (pairs * (3 + 2 * V) + T)
    combines, d = (T, T) if impl == "recurrent" else (0, 1)
    while d < T:  # the scan's steps
        combines += T - d
        d *= 2
    return B * H * (combines * per + T * V)
