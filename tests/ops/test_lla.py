"""local_linear_attention: blocked vs reference (fwd + bwd), an independent least-squares solve,
the softmax limit (torch SDPA), a locally linear synthetic task, and input errors.

No peer implementation exists (the official repository has no code; fla-core has none), so the
peers are (a) the objective solved per query with ``torch.linalg.lstsq`` on the stacked,
ridge-augmented problem, written here independently of the op, and (b) SDPA at huge ridge.
Convention (same as the op): the data term uses the normalised softmax weights ``s_ij``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from attnzoo.ops.lla import local_linear_attention
from tests.helpers import assert_all_close, fwd_bwd

LENGTHS = [1, 7, 63, 100]  # the reference solve builds [B, H, T, T, 1+K]: keep T small
BLOCK = 16  # divides none of LENGTHS
B, H, K, V = 2, 3, 4, 5


def inputs(T: int, S: int | None = None, Hkv: int = H) -> list[torch.Tensor]:
    S = T if S is None else S
    return [torch.randn(B, T, H, K), torch.randn(B, S, Hkv, K), torch.randn(B, S, Hkv, V)]


@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_blocked_matches_reference(T: int, causal: bool) -> None:
    xs = inputs(T)
    g = torch.randn(B, T, H, V)
    kw = {"causal": causal, "ridge": 0.5}

    def run(impl: str, **extra: int):
        return lambda q, k, v: local_linear_attention(q, k, v, impl=impl, **kw, **extra)

    want = fwd_bwd(run("reference"), xs, g)
    got = fwd_bwd(run("blocked", block_size=BLOCK), xs, g)
    assert_all_close(got, want, atol=1e-4, rtol=1e-4)


def test_cross_gqa_and_auto() -> None:
    xs = inputs(11, S=6, Hkv=1)
    g = torch.randn(B, 11, H, V)
    kw = {"causal": False, "ridge": 0.2}
    want = fwd_bwd(lambda q, k, v: local_linear_attention(q, k, v, impl="reference", **kw), xs, g)
    got = fwd_bwd(lambda q, k, v: local_linear_attention(q, k, v, block_size=4, **kw), xs, g)
    assert_all_close(got, want, atol=1e-4, rtol=1e-4)
    q, k, v = xs
    rep = local_linear_attention(q, k.expand(-1, -1, H, -1), v.expand(-1, -1, H, -1), **kw)
    torch.testing.assert_close(local_linear_attention(q, k, v, **kw), rep)


def lstsq_peer(q, k, v, causal: bool, ridge: float, scale: float) -> torch.Tensor:
    """Solve min_{b,W} 1/2 sum_j s_j ||v_j - b - W(k_j - q)||^2 + ridge ||W||^2 per query by
    least squares on the stacked rows ``sqrt(s_j) [1, (k_j - q)^T]`` plus ``K`` ridge rows
    ``sqrt(2 ridge) e_m`` (target 0), which is twice the objective."""
    Bn, T, Hn, Kn = q.shape
    out = torch.zeros(Bn, T, Hn, v.shape[-1], dtype=q.dtype)
    for b in range(Bn):
        for h in range(Hn):
            for i in range(T):
                n = i + 1 if causal else k.shape[1]
                kj, vj = k[b, :n, h], v[b, :n, h]  # [n, K], [n, V]
                s = torch.softmax(scale * kj @ q[b, i, h], dim=0)  # [n]
                rows = torch.cat([torch.ones(n, 1, dtype=q.dtype), kj - q[b, i, h]], dim=1)
                w = s.sqrt()[:, None]
                reg = torch.cat(
                    [
                        torch.zeros(Kn, 1, dtype=q.dtype),
                        math.sqrt(2 * ridge) * torch.eye(Kn, dtype=q.dtype),
                    ],
                    1,
                )
                A = torch.cat([w * rows, reg.to(q.dtype)])  # [n + K, 1 + K]
                y = torch.cat([w * vj, torch.zeros(Kn, vj.shape[1], dtype=q.dtype)])
                theta = torch.linalg.lstsq(A, y, driver="gelsd").solution  # [1+K, V]
                out[b, i, h] = theta[0]
    return out


@pytest.mark.parametrize("impl", ["reference", "blocked"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("ridge", [1e-3, 0.7, 30.0])
def test_closed_form_equals_explicit_least_squares(impl: str, causal: bool, ridge: float) -> None:
    q, k, v = (t.double() for t in inputs(9))
    q, k, v = q[:1], k[:1], v[:1]
    want = lstsq_peer(q, k, v, causal, ridge, scale=0.4)
    got = local_linear_attention(
        q, k, v, causal=causal, ridge=ridge, scale=0.4, impl=impl, block_size=4
    )
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("impl", ["reference", "blocked"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_huge_ridge_is_softmax_attention(impl: str, causal: bool) -> None:
    q, k, v = inputs(40)
    got = local_linear_attention(q, k, v, causal=causal, ridge=1e8, impl=impl, block_size=BLOCK)
    qh, kh, vh = (rearrange(t, "b t h k -> b h t k") for t in (q, k, v))
    want = rearrange(
        F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal), "b h t v -> b t h v"
    )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # and a moderate ridge is measurably different from softmax
    near = local_linear_attention(q, k, v, causal=causal, ridge=0.1, impl=impl)
    assert (near - want).abs().max() > 1e-2


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_recovers_a_locally_linear_map(causal: bool) -> None:
    """v = A k + c exactly: LLA's intercept at q is A q + c; softmax gives A mu + c."""
    torch.manual_seed(1)
    T, Kd, Vd = 60, 3, 2
    A, c = torch.randn(Vd, Kd), torch.randn(Vd)
    k = torch.randn(1, T, 1, Kd)  # unit scale: the weights stay spread (Sigma >> ridge)
    v = k @ A.T + c  # [1, T, 1, V]
    q = torch.randn(1, T, 1, Kd)
    target = q @ A.T + c
    lla = local_linear_attention(q, k, v, causal=causal, ridge=1e-4, block_size=BLOCK)
    soft = local_linear_attention(q, k, v, causal=causal, ridge=1e8, block_size=BLOCK)
    rows = slice(10, None) if causal else slice(None)  # causal: enough keys to fit A well
    err_lla = (lla - target)[:, rows].abs().max()
    err_soft = (soft - target)[:, rows].abs().max()
    assert err_lla < 0.05 and err_soft > 0.5 and err_soft > 20 * err_lla, (err_lla, err_soft)


def test_gradcheck_float64() -> None:
    q, k, v = (t.double()[:1, :6, :1].requires_grad_(True) for t in inputs(6))
    fn = lambda q, k, v: local_linear_attention(q, k, v, causal=True, ridge=0.3, block_size=4)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_no_grad_and_empty() -> None:
    q, k, v = inputs(5)
    with torch.no_grad():
        y = local_linear_attention(q, k, v, causal=True, ridge=1.0)
    torch.testing.assert_close(y, local_linear_attention(q, k, v, causal=True, ridge=1.0))
    q0, k0, v0 = inputs(0)
    assert local_linear_attention(q0, k0, v0, causal=True, ridge=1.0).shape == (B, 0, H, V)


HALF_TOL = {torch.bfloat16: 2e-2, torch.float16: 2e-3}  # a few units of the dtype's rounding


@pytest.mark.parametrize("impl", ["reference", "blocked"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_is_solved_in_float32(impl: str, dtype: torch.dtype) -> None:
    """float16 / bfloat16 inputs (torch has no half-precision LU) give the float32 result on the
    same rounded inputs, rounded to the input dtype; gradients come back in it too."""
    q, k, v = (t.to(dtype).requires_grad_(True) for t in inputs(19))
    kw = {"causal": True, "ridge": 0.5, "impl": impl, "block_size": BLOCK}
    y = local_linear_attention(q, k, v, **kw)
    want = local_linear_attention(q.float(), k.float(), v.float(), **kw)
    assert y.dtype == dtype
    tol = HALF_TOL[dtype]
    torch.testing.assert_close(y.float(), want, atol=tol, rtol=tol)
    grads = torch.autograd.grad(y.float().sum(), (q, k, v))
    wants = torch.autograd.grad(want.sum(), (q, k, v))
    for g, w in zip(grads, wants, strict=True):
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), w.float(), atol=5 * tol, rtol=5 * tol)


@pytest.mark.parametrize(
    "kw,err,match",
    [
        ({"ridge": 0.0}, ValueError, "ridge must be a finite float > 0, got 0.0"),
        ({"ridge": -1.0}, ValueError, "ridge must be a finite float > 0, got -1.0"),
        ({"ridge": float("inf")}, ValueError, "ridge must be a finite float > 0"),
        ({"ridge": True}, ValueError, "ridge must be a finite float > 0, got True"),
        ({"causal": 1}, TypeError, "causal must be a bool, got 1"),
        ({"impl": "chunk"}, ValueError, "impl must be one of 'auto', 'reference', 'blocked'"),
        ({"block_size": 0}, ValueError, "block_size must be a positive int, got 0"),
        ({"scale": float("nan")}, ValueError, "scale must be a finite float or None"),
    ],
)
def test_bad_arguments(kw: dict, err: type, match: str) -> None:
    q, k, v = inputs(4)
    args = {"causal": False, "ridge": 1.0} | kw
    with pytest.raises(err, match=match):
        local_linear_attention(q, k, v, **args)


def test_bad_shapes() -> None:
    q, k, v = inputs(4, S=3)
    with pytest.raises(ValueError, match="causal=True needs as many keys as queries, got T=4"):
        local_linear_attention(q, k, v, causal=True, ridge=1.0)
    with pytest.raises(ValueError, match="k must have 4 dims"):
        local_linear_attention(q, k[0], v, causal=False, ridge=1.0)


def saved_floats(T: int, impl: str) -> float:
    """Distinct storage (in floats) that autograd keeps for backward after one forward."""
    q, k, v = (torch.randn(1, T, 2, 8, requires_grad=True) for _ in range(3))
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        local_linear_attention(q, k, v, causal=True, ridge=1.0, impl=impl, block_size=32)
    return sum(seen.values()) / 4


def test_blocked_keeps_linear_memory_for_backward() -> None:
    """Checkpointed query blocks: autograd keeps O(T·K^2) (the key features), never T x T."""
    small, big = saved_floats(128, "blocked"), saved_floats(512, "blocked")
    assert big < 4.5 * small and big < 512 * 512
    assert saved_floats(128, "reference") > 128 * 128  # the spec keeps the T x T weights
