"""Sparsifiner: timm ``Attention`` at keep rate 1, mask density, the reconstruction loss, impls."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import attnzoo as az
from attnzoo.mixers.base import auxiliary_loss
from attnzoo.mixers.seq.sparsifiner import SparsifinerAttention, sparsifiner_flops


def _block(**cfg: object) -> SparsifinerAttention:
    torch.manual_seed(0)
    m = az.build_mixer("sparsifiner", **{"d_model": 24, "num_heads": 3, "max_tokens": 64, **cfg})
    assert isinstance(m, SparsifinerAttention)
    return m


def _x(N: int, B: int = 2, D: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, N, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("impl", ["reference", "gather"])
@pytest.mark.parametrize("cls_token", [False, True])
def test_keep_rate_one_equals_timm_attention(impl: str, cls_token: bool) -> None:
    from timm.models.vision_transformer import Attention

    from attnzoo.peers import randomise_biases

    theirs = randomise_biases(Attention(24, num_heads=3, qkv_bias=True), torch.Generator())
    ours = _block(keep_rate=1.0, qkv_bias=True, cls_token=cls_token, impl=impl).eval()
    with torch.no_grad():
        for name in ("qkv.weight", "qkv.bias", "proj.weight", "proj.bias"):
            ours.get_parameter(name).copy_(theirs.get_parameter(name))
    x1 = _x(19).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = ours(x1), theirs(x2)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-6)
    w = torch.randn(y1.shape)
    (y1 * w).sum().backward()
    (y2 * w).sum().backward()
    assert x1.grad is not None and x2.grad is not None
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-6)
    g_ours, g_theirs = ours.get_parameter("qkv.weight").grad, theirs.qkv.weight.grad
    assert g_ours is not None and g_theirs is not None
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("N,keep", [(23, 0.25), (40, 0.5), (9, 0.1)])
def test_mask_density_is_the_keep_rate(N: int, keep: float) -> None:
    m = _block(keep_rate=keep, cls_token=True)
    a = m.attention_maps(_x(N)).weights  # [B, H, N, N]
    kept = (a > 0).sum(-1)  # [B, H, N]
    budget = math.ceil(keep * N)
    assert (kept[:, :, 1:] == budget).all() and (kept[:, :, 0] == N).all()
    density = (kept[:, :, 1:].sum() / (kept[:, :, 1:].numel() * N)).item()
    assert abs(density - keep) <= 1 / N


def test_the_mask_depends_on_the_input() -> None:
    m = _block()
    a, b = (m.attention_maps(_x(30, seed=s)).weights > 0 for s in (1, 2))
    assert not torch.equal(a, b)


@pytest.mark.parametrize("cls_token", [False, True])
def test_impls_agree_forward_and_backward(cls_token: bool) -> None:
    ref = _block(keep_rate=0.3, cls_token=cls_token, impl="reference").double()
    fast = _block(keep_rate=0.3, cls_token=cls_token, impl="gather").double()
    fast.load_state_dict(ref.state_dict())
    w = torch.randn(2, 29, 24, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    outs = []
    for m in (ref, fast):
        x = _x(29).double().requires_grad_()
        y = m(x)
        (y * w).sum().backward()
        assert x.grad is not None
        outs.append((y.detach(), x.grad, [p.grad for p in m.parameters() if p.grad is not None]))
    (y0, gx0, gp0), (y1, gx1, gp1) = outs
    torch.testing.assert_close(y1, y0)
    torch.testing.assert_close(gx1, gx0)
    assert len(gp0) == len(gp1) == 3  # qkv.weight, proj; the predictor learns from aux_loss
    for a, b in zip(gp1, gp0, strict=True):
        torch.testing.assert_close(a, b)


def test_aux_loss_is_the_reconstruction_of_the_latest_training_forward() -> None:
    m = _block(cls_token=True)
    assert m.aux_loss() is None
    m.eval()
    m(_x(13))
    assert m.aux_loss() is None  # eval forwards leave it alone
    m.train()
    x = _x(13)
    m(x)
    loss = m.aux_loss()
    assert loss is not None and loss.ndim == 0 and loss.requires_grad
    # the official MSE (reduction='sum') between coef · B and the dense attention, cls row out
    q, k, _ = m._project(x)
    _, _, coef = m._predict(q, k)
    target = torch.softmax(torch.einsum("bthk,bshk->bhts", q, k) * 8**-0.5, -1)[:, :, 1:]
    approx = coef[:, :, 1:] @ m.proj_back_n[:13, :2].t()
    torch.testing.assert_close(loss, 0.01 * F.mse_loss(approx, target.detach(), reduction="sum"))
    loss.backward()
    for name in ("proj_c_q.weight", "proj_c_k.weight", "proj_n", "proj_back_n"):
        grad = m.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_kl_and_none_losses() -> None:
    m = _block(recon_loss="kl", recon_weight=1.0)
    m(_x(12))
    loss = m.aux_loss()
    assert loss is not None and loss.item() >= 0
    m = _block(recon_loss="none")
    m(_x(12))
    assert m.aux_loss() is None


def test_every_parameter_trains_from_the_task_and_reconstruction_losses() -> None:
    """The mask is detached: the predictor learns from ``aux_loss`` only, the rest from the
    output (what the contract's gradient test sees)."""
    m = _block()
    y = m(_x(15))
    aux = auxiliary_loss(m)
    assert aux is not None
    total = (y * torch.randn(y.shape)).sum() + aux
    total.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_config_errors_and_long_calls() -> None:
    with pytest.raises(ValueError, match="reduce_c must be <="):
        _block(reduce_c=9)
    with pytest.raises(ValueError, match="more than max_tokens=64"):
        _block()(_x(65))
    with pytest.raises(ValueError, match="keep_rate"):
        _block(keep_rate=0.0)


def test_flops_count_keep_n_squared_pairs() -> None:
    cfg = _block(keep_rate=0.25, coef_topk=8).cfg
    B, N, D, H, K, c, r = 2, 48, 24, 3, 8, 4, 8
    proj = 2 * B * N * D * 4 * D + 2 * B * N * H * 2 * K * c
    pred = 2 * B * H * (2 * c * N * r + N * 8 * N)
    attn = 2 * B * H * (N * 12) * 2 * K
    assert sparsifiner_flops(cfg, B, N, None, None) == proj + pred + attn
