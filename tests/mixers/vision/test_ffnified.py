"""ffnified mixer (FFNet's FFNified attention): the ``conv`` path (BatchNorms and RepVGG
branches folded on the fly in eval mode) against ``impl="reference"`` (the unfused block
written out: 1x1 projection as an einsum, ``bn_reference``, shift-and-add depthwise
convolutions), forward and backward, eval and train mode; ``fuse()`` leaves eval-mode outputs
unchanged and the reference reads the fused mixer too; locality; FLOPs; config errors.

The reference follows ``Token_Mixer`` of the official repository
(https://github.com/ysj9909/FFNet, ``models/ffnet.py``): ``conv2(act(conv1(fc(x))))`` with
``fc = Conv2d_BN(C, C)`` and each ``conv`` either ``RepVGGDW`` (``BN(DW7x7) + BN(DW3x3)``) or a
plain biased depthwise convolution. Tensors are channels-last, float32 (PyTorch's float64
depthwise convolution on channels-last tensors takes a slow per-group path).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import attnzoo as az
from attnzoo.testing import randomise


def with_impl(m: az.Mixer, impl: str) -> az.Mixer:
    """The same mixer (weights, fused or not, train/eval mode) running ``impl``."""
    twin = copy.deepcopy(m)
    twin.cfg = m.cfg.replace(impl=impl)
    return twin


def randomised(m: az.Mixer, seed: int = 11) -> az.Mixer:
    """Weights of order one, BatchNorms away from their init, eval mode."""
    return randomise(m, seed=seed, std=0.3).eval()


def check(m: az.Mixer, x: torch.Tensor) -> None:
    """``m`` against its reference twin: output and every gradient (x and parameters)."""
    ref = with_impl(m, "reference")
    x = x.clone().requires_grad_(True)
    got, want = m(x), ref(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(got)
    ga = torch.autograd.grad((got * g).sum(), [x, *m.parameters()])
    gb = torch.autograd.grad((want * g).sum(), [x, *ref.parameters()])
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "kw,branch",
    [
        ({}, 3),  # official large-kernel stage: RepVGGDW(7) = 7x7 + 3x3 branches
        ({"kernel_size": 3}, None),  # official early stage: plain biased 3x3
        ({"kernel_size": 5, "activation": "relu"}, 3),
        ({"rep_kernel_size": None}, None),
        ({"kernel_size": 9, "rep_kernel_size": 5}, 5),
    ],
)
@pytest.mark.parametrize("grid", [(7, 13), (1, 1)])
@pytest.mark.parametrize("impl", ["conv", "auto"])
def test_unfused_matches_reference(
    kw: dict, branch: int | None, grid: tuple[int, int], impl: str
) -> None:
    torch.manual_seed(0)
    m = randomised(az.build_mixer("ffnified", d_model=32, bn_eps=0.1, impl=impl, **kw))
    assert m.cfg.branch == branch and (m.conv1.bn is None) == (branch is None)
    check(m, torch.randn(2, *grid, 32))  # eps = 0.1 is visibly part of every BatchNorm


def test_train_mode_uses_batch_statistics() -> None:
    """In train mode both paths normalise with the batch's statistics (over B, h, w)."""
    torch.manual_seed(1)
    m = randomised(az.build_mixer("ffnified", d_model=16)).train()
    x = torch.randn(3, 6, 5, 16)
    check(m, x)
    with torch.no_grad():
        eval_out = m.eval()(x)
        assert (m.train()(x) - eval_out).abs().max() > 1e-2  # the statistics differ


@pytest.mark.parametrize("kw", [{}, {"kernel_size": 3}, {"kernel_size": 5, "activation": "relu"}])
@pytest.mark.parametrize("grid", [(7, 13), (30, 30), (1, 1)])
def test_fuse_leaves_eval_outputs_unchanged(kw: dict, grid: tuple[int, int]) -> None:
    torch.manual_seed(2)
    m = az.build_mixer("ffnified", d_model=48, bn_eps=0.1, **kw)  # eps visibly part of the fold
    with torch.no_grad():  # random BatchNorm statistics, as after training
        for bn in m.modules():
            if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0.0, 0.3)
                bn.running_mean.normal_(0.0, 0.3)
                bn.running_var.uniform_(0.5, 2.0)
    m.eval()
    x = torch.randn(2, *grid, 48)
    with torch.no_grad():
        before = m(x)
    assert not m.fused
    assert m.fuse() is m and m.fused
    names = [n for n, _ in m.named_parameters()]
    assert names == ["fc.weight", "fc.bias", "conv1.conv.weight", "conv1.conv.bias"] + [
        "conv2.conv.weight",
        "conv2.conv.bias",
    ]
    assert not any(isinstance(b, torch.nn.modules.batchnorm._BatchNorm) for b in m.modules())
    k = m.cfg.kernel_size
    assert m.conv1.conv.weight.shape == (48, 1, k, k)
    with torch.no_grad():
        after = m(x)
        torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
        # the reference reads the fused mixer (biased 1x1, plain biased depthwise convs)
        torch.testing.assert_close(with_impl(m, "reference")(x), after, atol=1e-5, rtol=1e-5)
        m.fuse()  # idempotent
        torch.testing.assert_close(m(x), after)
    # the fused mixer is an ordinary differentiable module, the same in train and eval mode
    xg = x.clone().requires_grad_(True)
    m.train()(xg).sum().backward()
    assert torch.isfinite(xg.grad).all() and m.conv1.conv.bias.grad is not None
    torch.testing.assert_close(m(x), after)


def test_fused_kernel_is_padded_branch_sum() -> None:
    """With fresh BatchNorms (mean 0, variance 1, identity affine) the fused 7x7 kernel is
    ``(w7 + w3 in its centre) / sqrt(1 + eps)`` and the bias is zero."""
    m = az.build_mixer("ffnified", d_model=8, bn_eps=0.25).eval()
    w7, w3 = m.conv1.conv.weight.clone(), m.conv1.conv_small.weight.clone()
    m.fuse()
    eps_scale = 1 / math.sqrt(1 + m.cfg.bn_eps)
    want = w7.clone()
    want[:, :, 2:5, 2:5] += w3
    torch.testing.assert_close(m.conv1.conv.weight, want * eps_scale)
    assert m.conv1.conv.bias.abs().max() == 0


@pytest.mark.parametrize("kernel_size", [3, 7])
def test_receptive_field_is_two_kernels(kernel_size: int) -> None:
    """A change at one pixel reaches exactly the pixels within 2 * (k // 2) (Chebyshev)."""
    torch.manual_seed(3)
    m = randomised(az.build_mixer("ffnified", d_model=8, kernel_size=kernel_size))
    x = torch.randn(1, 21, 21, 8)
    x2 = x.clone()
    x2[:, 10, 10] += 1.0
    d = (m(x) - m(x2)).abs().amax(-1)[0]  # [21, 21]
    r = 2 * (kernel_size // 2)
    inside = torch.zeros(21, 21, dtype=torch.bool)
    inside[10 - r : 11 + r, 10 - r : 11 + r] = True
    assert d[inside].min() > 0 and d[~inside].max() == 0


def test_flops() -> None:
    B, T, C = 2, 91, 64
    assert az.build_mixer("ffnified", d_model=C).flops(B, T) == 2 * B * T * (C * C + 2 * C * 58)
    plain = az.build_mixer("ffnified", d_model=C, kernel_size=3)
    assert plain.flops(B, T) == 2 * B * T * (C * C + 2 * C * 9)


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        ({"kernel_size": 4}, ValueError, "ffnified: kernel_size must be a positive odd int.*got 4"),
        ({"kernel_size": 0}, ValueError, "kernel_size must be a positive odd int.*got 0"),
        ({"rep_kernel_size": 2}, ValueError, "rep_kernel_size must be a positive odd int.*got 2"),
        ({"bn_eps": 0.0}, ValueError, "bn_eps must be > 0, got 0.0"),
        ({"activation": "silu"}, TypeError, "config 'activation' must be 'gelu' \\| 'relu'"),
        ({"impl": "fused"}, TypeError, "config 'impl' must be 'auto' \\| 'reference' \\| 'conv'"),
        ({"causal": True}, ValueError, "ffnified does not support causal=True"),
        ({"kernel": 7}, TypeError, "unknown config key 'kernel' \\(did you mean 'kernel_size'"),
    ],
)
def test_bad_config_is_named(kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("ffnified", d_model=32, **kw)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_reference_normalises_in_float32(dtype: torch.dtype) -> None:
    """``bn_reference`` normalises float16/bfloat16 in float32: in float16 the backward of
    ``1/sqrt(var + eps)`` of the freshly initialised mixer's tiny activations overflowed and
    made every gradient before the last BatchNorm NaN. Train mode, default initialisation."""
    torch.manual_seed(0)
    m = az.build_mixer("ffnified", d_model=32, impl="reference").to(dtype)
    x = torch.randn(2, 7, 9, 32, dtype=dtype, requires_grad=True)
    y = m(x)
    twin = with_impl(m, "conv")
    torch.testing.assert_close(y.float(), twin(x).float(), atol=0.05, rtol=0.05)
    y.float().square().sum().backward()
    for name, t in [("x", x), *m.named_parameters()]:
        assert torch.isfinite(t.grad).all(), f"{name}: non-finite gradient in {dtype}"
