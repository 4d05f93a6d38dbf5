"""Local Linear Attention (LLA): a local linear regression around each query, solved exactly.

Zuo et al., "Local Linear Attention", 2025, https://arxiv.org/abs/2510.01450. The official
repository https://github.com/Yifei-Zuo/Flash-LLA holds only a README ("code will be released
soon"), so everything here is written from the paper's objective; the paper's FlashLLA solves
the ``K x K`` system with conjugate gradient, here it is a direct batched solve.

Softmax attention is the Nadaraya-Watson (locally *constant*) estimator of the value at ``q_i``;
LLA fits a locally *linear* model instead. Per query ``i`` and head::

    min_{b, W}  1/2 sum_j s_ij ||v_j - b - W (k_j - q_i)||^2  +  lambda ||W||_F^2
    s_ij = softmax_j(scale * q_i . k_j)        (over j <= i when causal)

and the output is the intercept ``b_i``. Setting the gradients to zero gives the closed form
(with ``mu_i = sum_j s_ij k_j`` and ``Sigma_i = sum_j s_ij (k_j - mu_i)(k_j - mu_i)^T``)::

    rho_i = (Sigma_i + 2 lambda I)^{-1} (mu_i - q_i)
    b_i   = sum_j s_ij v_j [1 - (k_j - mu_i)^T rho_i]

``lambda -> inf`` gives ``rho_i -> 0`` and ``b_i -> sum_j s_ij v_j``: softmax attention.

**Ridge convention.** The paper writes the data term with the *unnormalised* kernel weights
``w_ij = exp(scale * q_i . k_j)``, which makes the effective ridge ``2 lambda / sum_j w_ij``:
it depends on the absolute size of the scores (and overflows/underflows with them). Here the
data term uses the normalised weights ``s_ij`` (they sum to one), so ``ridge = lambda`` is a
scale-free regulariser on the weighted key covariance; it equals the paper's objective with a
per-query ``lambda_i = lambda * sum_j w_ij``. Every path here (and the tests' independent
least-squares solve) uses this convention.

- ``reference`` builds each query's ``(1 + K) x (1 + K)`` normal equations of the weighted,
  ridge-penalised least-squares problem in ``[b, W]`` explicitly (a ``[B, H, T, S, 1 + K]``
  design tensor) and solves them with :func:`torch.linalg.solve`: the spec, small T only.
- ``blocked`` computes the closed form one query block at a time. Per key it forms the features
  ``[1, k, v, k k^T, v k^T]`` once (``O(S·K·(K + V))`` memory); a query block's softmax weights
  (``block x S``, stabilised by the row max, which cancels) times those features give the
  weighted moments ``sum s, sum s k, sum s v, sum s k k^T, sum s v k^T``, from which ``Sigma``,
  ``rho`` (a batched ``K x K`` solve) and ``b`` follow. No ``T x S x K`` tensor is built. Under
  autograd each query block is checkpointed (recomputed in backward), so peak memory is
  ``O(S·K·(K + V) + block·S)`` in forward and backward.

Precision: half-precision inputs (``float16``, ``bfloat16``) are computed in ``float32`` and the
output cast back to the input dtype. The solve needs it (torch has no half-precision LU, on CPU
or GPU), and so do the moments before it: ``Sigma = E[k k^T] - mu mu^T`` cancels, which in
bfloat16's 8 bits of mantissa leaves little of the covariance. Memory of the blocked path's
features doubles for such inputs; the output matches the ``float32`` result to the input
dtype's rounding.

Cost per query and head: ``O(S·(K^2 + V·K))`` for the moments plus ``O(K^3)`` for the solve.
A streaming state is a growing KV cache: the weights ``s_ij`` depend on ``q_i`` through the
exponential, so (as for softmax attention) no constant-size summary of the past suffices.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from attnzoo.ops.common import (
    check_block,
    check_impl,
    check_qkv,
    expand_kv,
    heads_first,
    heads_last,
    resolve_scale,
)

IMPLS = ("auto", "reference", "blocked")
OP = "local_linear_attention"
HALF = (torch.float16, torch.bfloat16)  # computed in float32


def local_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    ridge: float,
    scale: float | None = None,
    impl: str = "auto",
    block_size: int = 64,
) -> Tensor:
    """Local linear attention over ``[B, T, H, K]`` tensors.

    Args:
        q, k, v: queries, keys, values. ``k``/``v`` may have fewer heads (GQA).
        causal: query ``i`` regresses on keys ``j <= i`` (needs ``S == T``); otherwise all keys.
        ridge: ``lambda > 0``, the penalty on the slope ``W`` (normalised-weight convention,
            see the module docstring). Large values approach softmax attention.
        scale: score scale of the kernel weights; ``None`` means ``1/sqrt(K)``.
        impl: ``"auto"`` (blocked), ``"reference"`` or ``"blocked"``.
        block_size: queries per block of the blocked path.

    float16 and bfloat16 inputs are computed in float32 and the output cast back.

    Shapes:
        q ``[B, T, H, K]``, k ``[B, S, Hkv, K]``, v ``[B, S, Hkv, V]`` -> ``[B, T, H, V]``
    """
    check_impl(OP, impl, IMPLS)
    B, T, S, H, _, K = check_qkv(OP, q, k, v)
    if not isinstance(causal, bool):
        raise TypeError(f"{OP}: causal must be a bool, got {causal!r}")
    if (
        isinstance(ridge, bool)
        or not isinstance(ridge, (int, float))
        or not math.isfinite(ridge)
        or ridge <= 0
    ):
        raise ValueError(f"{OP}: ridge must be a finite float > 0, got {ridge!r}")
    if causal and S != T:
        raise ValueError(
            f"{OP}: causal=True needs as many keys as queries, got T={T} queries and S={S} keys"
        )
    check_block(OP, "block_size", block_size)
    sc = resolve_scale(OP, scale, K)
    k, v = expand_kv(k, H), expand_kv(v, H)
    if T == 0 or S == 0:
        return q.new_zeros(B, T, H, v.shape[3])  # no queries, or no keys to regress on
    dtype = q.dtype
    if dtype in HALF:  # the moments and the solve in float32 (see the module docstring)
        q, k, v = q.float(), k.float(), v.float()
    if impl == "reference":
        o = _reference(q, k, v, causal, float(ridge), sc)
    else:
        o = _blocked(q, k, v, causal, float(ridge), sc, block_size)
    return o.to(dtype)


def _reference(q: Tensor, k: Tensor, v: Tensor, causal: bool, ridge: float, scale: float) -> Tensor:
    qh, kh, vh = (heads_first(t) for t in (q, k, v))  # [B, H, T|S, K|V]
    T, S, K = qh.shape[2], kh.shape[2], qh.shape[3]
    logits = qh @ kh.transpose(-1, -2) * scale  # [B, H, T, S]
    if causal:
        future = torch.ones(T, S, dtype=torch.bool, device=q.device).triu(1)
        logits = logits.masked_fill(future, float("-inf"))
    s = torch.softmax(logits, dim=-1)  # [B, H, T, S]
    d = kh[:, :, None] - qh[:, :, :, None]  # [B, H, T, S, K]
    X = torch.cat([torch.ones_like(d[..., :1]), d], dim=-1)  # [B, H, T, S, 1+K]
    penalty = torch.full((K + 1,), 2 * ridge, dtype=q.dtype, device=q.device)
    penalty[0] = 0.0  # the intercept b is not penalised
    A = torch.einsum("bhts,bhtsa,bhtsc->bhtac", s, X, X) + torch.diag(penalty)  # [.., 1+K, 1+K]
    rhs = torch.einsum("bhts,bhtsa,bhsv->bhtav", s, X, vh)  # [B, H, T, 1+K, V]
    theta = torch.linalg.solve(A, rhs)  # [B, H, T, 1+K, V]: rows [b; W^T]
    return heads_last(theta[..., 0, :])  # [B, T, H, V]


def _blocked(
    q: Tensor, k: Tensor, v: Tensor, causal: bool, ridge: float, scale: float, block: int
) -> Tensor:
    qh, kh, vh = (heads_first(t) for t in (q, k, v))
    T = qh.shape[2]
    kk = rearrange(kh[..., :, None] * kh[..., None, :], "b h s k l -> b h s (k l)")
    vk = rearrange(vh[..., :, None] * kh[..., None, :], "b h s v k -> b h s (v k)")
    feats = torch.cat([torch.ones_like(kh[..., :1]), kh, vh, kk, vk], dim=-1)  # [B, H, S, F]
    use_ckpt = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    outs = []
    for q0 in range(0, T, block):
        args = (qh[:, :, q0 : q0 + block], kh, feats, q0, causal, ridge, scale)
        if use_ckpt:
            outs.append(checkpoint(_query_block, *args, use_reentrant=False))
        else:
            outs.append(_query_block(*args))
    return heads_last(torch.cat(outs, dim=2))  # [B, T, H, V]


def _query_block(
    qb: Tensor, kh: Tensor, feats: Tensor, q0: int, causal: bool, ridge: float, scale: float
) -> Tensor:
    """The closed form for one block of queries.

    Shapes:
        qb ``[B, H, n, K]``, kh ``[B, H, S, K]``, feats ``[B, H, S, 1+K+V+K²+V·K]``
        -> ``[B, H, n, V]``
    """
    n, K = qb.shape[2], qb.shape[3]
    V = (feats.shape[-1] - 1 - K - K * K) // (K + 1)
    end = q0 + n if causal else kh.shape[2]  # keys past the block's last query are all masked
    logits = qb @ kh[:, :, :end].transpose(-1, -2) * scale  # [B, H, n, end]
    if causal:
        i = torch.arange(q0, q0 + n, device=qb.device)
        j = torch.arange(end, device=qb.device)
        logits = logits.masked_fill(j[None, :] > i[:, None], float("-inf"))
    # the row max only stabilises exp(); it cancels in the normalisation, so no gradient
    p = torch.exp(logits - logits.detach().amax(-1, keepdim=True))  # [B, H, n, end]
    acc = p @ feats[:, :, :end]  # [B, H, n, F]
    mom = acc[..., 1:] / acc[..., :1]  # weighted means of [k, v, k k^T, v k^T]
    mu, vbar, m2, vk = torch.split(mom, [K, V, K * K, V * K], dim=-1)
    m2 = rearrange(m2, "b h n (k l) -> b h n k l", k=K)
    vk = rearrange(vk, "b h n (v k) -> b h n v k", v=V)
    eye = torch.eye(K, dtype=qb.dtype, device=qb.device)
    sigma = m2 - mu[..., :, None] * mu[..., None, :] + 2 * ridge * eye  # [B, H, n, K, K]
    rho = torch.linalg.solve(sigma, (mu - qb)[..., None])[..., 0]  # [B, H, n, K]
    # b = sum_j s_j v_j (1 - (k_j - mu)^T rho) = vbar - (sum_j s_j v_j k_j^T) rho + vbar (mu.rho)
    return vbar - (vk @ rho[..., None])[..., 0] + vbar * (mu * rho).sum(-1, keepdim=True)


def lla_flops(B: int, H: int, K: int, V: int, T: int, S: int, causal: bool) -> int:
    """FLOPs (2 per multiply-add): scores, weighted moments of ``[1, k, v, kk^T, vk^T]`` over the
    attended pairs, and one ``K x K`` solve (``~K^3/3`` for the factorisation) per query."""
    pairs = T * (T + 1) // 2 if causal else T * S
    feats = 1 + K + V + K * K + V * K
    per_key = 2 * S * (K * K + V * K)
    return B * H * (2 * pairs * (K + feats) + T * (K**3 // 3 + 2 * K * K + 2 * V * K) + per_key)
