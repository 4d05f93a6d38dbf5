"""l2vit mixer: the ``chunk`` path (kv-first global state, ``nn.Conv2d`` LCM) against
``impl="reference"`` (explicit [N, N] clamped ReLU score matrix, shift-and-add LCM,
``bn_reference``), the attention alone and the whole mixer, forward and backward; the reference
against the official LGABlock composition; the LCM module against F.conv2d in train mode; the
attention maps; the clamp; locality; FLOPs; config errors.

The reference follows ``classification/models/l2vit.py`` of the official repository
(https://github.com/ChuanyangZheng/L2ViT): ``qkv`` reshaped to ``[B, N, 3, H, d]``, ReLU on q and
k, ``attn = q k^T`` materialised (the repository's commented qk-first form, which it says is
equal to the kv-first one), ``out = tau * attn v / clamp(attn.sum(-1), clamp_min)``, ``proj``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import attnzoo as az
from attnzoo.testing import randomise


def pair(impl: str, **kw: object) -> tuple[az.Mixer, az.Mixer]:
    """``(mixer with impl, its impl="reference" twin)``, same weights, eval mode. The default
    weights stay; biases, temperatures and the BatchNorm move off their init."""
    m = az.build_mixer("l2vit", impl=impl, **kw)
    m = randomise(m, seed=11, std=0.3, constant_only=True).eval()
    with torch.no_grad():  # one temperature per head, all d**-0.5 at init
        m.temperature.uniform_(0.1, 0.5)
    ref = az.build_mixer("l2vit", **{**m.cfg.to_dict(), "impl": "reference"}).eval()
    ref.load_state_dict(m.state_dict())
    return m, ref


def grads(y: torch.Tensor, g: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad((y * g).sum(), leaves))


def compare_grads(
    m: az.Mixer, ref: az.Mixer, x: torch.Tensor, got: torch.Tensor, want: torch.Tensor,
    names: list[str],
) -> None:  # fmt: skip
    g = torch.randn_like(got)
    ours, theirs = dict(m.named_parameters()), dict(ref.named_parameters())
    ga = grads(got, g, [x] + [ours[n] for n in names])
    gb = grads(want, g, [x] + [theirs[n] for n in names])
    for n, a, b in zip(["x", *names], ga, gb, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda e, n=n: f"{n}: {e}")


@pytest.mark.parametrize("impl", ["auto", "chunk"])
@pytest.mark.parametrize("clamp_min", [100.0, 1e-3])
@pytest.mark.parametrize("grid", [(7, 13), (5, 4), (1, 1)])
def test_attention_matches_explicit_score_matrix(
    impl: str, clamp_min: float, grid: tuple[int, int]
) -> None:
    torch.manual_seed(0)
    m, ref = pair(impl, d_model=64, num_heads=2, clamp_min=clamp_min)
    x = torch.randn(2, grid[0] * grid[1], 64, requires_grad=True)
    got, want = m.attention(x), ref.attention(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    names = ["qkv.weight", "qkv.bias", "temperature", "proj.weight"]
    compare_grads(m, ref, x, got, want, names)


@pytest.mark.parametrize("grid", [(7, 13), (6, 6)])
def test_mixer_matches_reference(grid: tuple[int, int]) -> None:
    torch.manual_seed(1)
    m, ref = pair("chunk", d_model=32, num_heads=2)
    x = torch.randn(2, *grid, 32, requires_grad=True)
    got, want = m(x), ref(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    names = ["qkv.weight", "temperature", "lcm.conv1.weight", "lcm.bn.weight"]
    names += ["lcm.conv2.weight", "lcm.conv2.bias"]
    compare_grads(m, ref, x, got, want, names)


def test_reference_is_the_official_block_composition() -> None:
    """The official LGABlock with CPE, norms and MLP removed, ``x1 = x + attn(x)``,
    ``x2 = x1 + LCM(x1)``, is ``x + mixer(x)``, with the attention and the LCM of the reference
    taken separately."""
    torch.manual_seed(5)
    _, ref = pair("chunk", d_model=32, num_heads=2)
    B, h, w, C = 2, 5, 6, 32
    x = torch.randn(B, h, w, C)
    x1 = x + ref.attention(x.reshape(B, h * w, C)).reshape(B, h, w, C)
    x2 = x1 + ref._lcm_reference(x1)
    torch.testing.assert_close(ref(x), x2 - x, atol=1e-6, rtol=1e-6)


def test_lcm_train_mode_uses_batch_statistics() -> None:
    """In train() the BatchNorm normalises with the batch's biased variance and moves its
    running statistics by momentum 0.1 (running_var with the unbiased variance)."""
    torch.manual_seed(2)
    m = az.build_mixer("l2vit", d_model=16, num_heads=2).train()
    u = torch.randn(3, 16, 5, 7)
    lcm = m.lcm
    t = F.gelu(F.conv2d(u, lcm.conv1.weight, lcm.conv1.bias, padding=3, groups=16))
    mean, var = t.mean((0, 2, 3)), t.var((0, 2, 3), unbiased=False)
    n = t.numel() // 16
    tn = (t - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5)
    want = F.conv2d(tn, lcm.conv2.weight, lcm.conv2.bias, padding=3, groups=16)
    torch.testing.assert_close(lcm(u), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lcm.bn.running_mean, 0.1 * mean)
    torch.testing.assert_close(lcm.bn.running_var, 0.9 + 0.1 * var * n / (n - 1))


@pytest.mark.parametrize("impl", ["chunk", "reference"])
def test_without_lcm_the_mixer_is_the_attention(impl: str) -> None:
    m, ref = pair(impl, d_model=32, lcm=False)
    assert m.lcm is None and not any("lcm" in n for n, _ in m.named_parameters())
    x = torch.randn(2, 5, 3, 32)
    want = ref.attention(x.reshape(2, 15, 32)).reshape(2, 5, 3, 32)
    torch.testing.assert_close(m(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["chunk", "reference"])
def test_attention_maps_are_the_normalised_clamped_weights(impl: str) -> None:
    """Weights are ``q_i . k_j / max(sum_j q_i . k_j, clamp_min)``: non-negative, rows sum to 1
    where the clamp is idle and to less than 1 where it engages; ``finish(A @ v)`` is the
    mixer's output (both paths' LCM)."""
    torch.manual_seed(6)
    m, _ = pair(impl, d_model=64, num_heads=2, clamp_min=70.0)
    m = m.double()
    x = torch.randn(2, 6, 7, 64, dtype=torch.float64)
    maps = m.attention_maps(x)
    a = maps.weights
    assert a.shape == (2, 2, 42, 42) and maps.values.shape == (2, 2, 42, 32)
    q, k, _ = m._qkv(x.reshape(2, 42, 64))
    rowsum = torch.einsum("bnhd,bmhd->bhn", q, k)  # [B, H, N]
    torch.testing.assert_close(a.sum(-1), rowsum / rowsum.clamp(min=70.0))
    assert (a >= 0).all() and (rowsum < 70.0).any() and (rowsum > 70.0).any()
    torch.testing.assert_close(maps.output(), m(x), atol=1e-10, rtol=1e-10)


def test_clamp_engages() -> None:
    """At init with unit inputs, q . sum_j k_j is below 100 for some tokens, so clamp_min=100
    changes the output vs a tiny clamp; with inputs scaled up, no denominator is clamped and the
    two agree."""
    torch.manual_seed(3)
    big = az.build_mixer("l2vit", d_model=64, num_heads=2, lcm=False).eval()
    ref = az.build_mixer("l2vit", d_model=64, num_heads=2, lcm=False, impl="reference").eval()
    ref.load_state_dict(big.state_dict())
    tiny = az.build_mixer("l2vit", d_model=64, num_heads=2, lcm=False, clamp_min=1e-6).eval()
    tiny.load_state_dict(big.state_dict())
    x = torch.randn(2, 7, 7, 64)
    B, N = 2, 49
    qk = (x.reshape(B, N, 64) @ big.qkv.weight.T + big.qkv.bias).relu()
    q, k = qk[..., :64].reshape(B, N, 2, 32), qk[..., 64:128].reshape(B, N, 2, 32)
    den = torch.einsum("bnhd,bhd->bnh", q, k.sum(1))
    assert (den < 100).float().mean() > 0.2  # the clamp is active on many tokens
    assert (big(x) - tiny(x)).abs().max() > 1e-3
    torch.testing.assert_close(big(x), ref(x), atol=1e-5, rtol=1e-5)  # clamped alike
    torch.testing.assert_close(big(30 * x), tiny(30 * x), atol=1e-5, rtol=1e-5)


def test_attention_is_global_and_lcm_is_local() -> None:
    """A change at the bottom-right corner reaches the top-left token through attention; without
    attention (zero output projection) only the 7x7 LCM remains, which reaches 6 pixels (two
    convolutions of radius 3) and no further."""
    torch.manual_seed(4)
    m, _ = pair("chunk", d_model=32)
    x = torch.randn(1, 15, 15, 32)
    x2 = x.clone()
    x2[:, 14, 14] += 3.0
    assert (m(x)[:, 0, 0] - m(x2)[:, 0, 0]).abs().max() > 1e-4
    with torch.no_grad():
        m.proj.weight.zero_()
    d = (m(x) - m(x2)).abs().amax(-1)[0]  # [15, 15]
    assert d[8:, 8:].max() > 1e-3 and d[:8].max() == 0 and d[:, :8].max() == 0


def test_flops() -> None:
    cfg = dict(d_model=64, num_heads=2)
    m = az.build_mixer("l2vit", **cfg)
    B, N, C, H, d = 2, 91, 64, 2, 32
    want = 2 * B * N * 4 * C * C + 2 * B * H * 2 * N * d * (d + 1) + 2 * 2 * B * N * C * 49
    assert m.flops(B, N) == want
    assert m.flops(B, 2 * N) == 2 * want  # linear in the token count
    no_lcm = az.build_mixer("l2vit", lcm=False, **cfg)
    assert no_lcm.flops(B, N) == want - 4 * B * N * C * 49


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        ({"clamp_min": 0.0}, ValueError, "l2vit: clamp_min must be a finite float > 0.*got 0.0"),
        ({"clamp_min": -1.0}, ValueError, "clamp_min must be .* got -1.0"),
        ({"clamp_min": float("inf")}, ValueError, "clamp_min must be a finite float"),
        ({"num_heads": 3}, ValueError, "d_model=64 is not divisible by num_heads=3"),
        ({"num_heads": 0}, ValueError, "num_heads must be >= 1, got 0"),
        ({"lcm_kernel_size": 4}, ValueError, "lcm_kernel_size must be a positive odd int.*got 4"),
        ({"lcm_kernel_size": 0}, ValueError, "lcm_kernel_size must be .*got 0"),
        ({"bn_eps": 0.0}, ValueError, "bn_eps must be > 0, got 0.0"),
        ({"impl": "fused"}, TypeError, "config 'impl' must be 'auto' \\| 'reference' \\| 'chunk'"),
        ({"clamp_min": "100"}, TypeError, "config 'clamp_min' must be float"),
        ({"causal": True}, ValueError, "l2vit does not support causal=True"),
        ({"clamp": 1.0}, TypeError, "unknown config key 'clamp' \\(did you mean 'clamp_min'"),
    ],
)
def test_bad_config_is_named(kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("l2vit", d_model=64, **kw)


@pytest.mark.parametrize("impl", ["chunk", "reference"])
def test_float16_sums_run_in_float32(impl: str) -> None:
    """In float16 the attention runs in float32 and its normalised output is cast back: over a
    24x24 grid of order-one weights the numerator and denominator pass float16's 65504 (NaN
    for ``chunk``, the row sums of ``reference``), their ratio does not."""
    torch.manual_seed(0)
    m = randomise(az.build_mixer("l2vit", d_model=64, impl=impl), seed=0, std=0.3).eval().half()
    x = (torch.randn(2, 24, 24, 64) * 4).half().requires_grad_(True)
    y = m(x)
    want = copy.deepcopy(m).float()(x.detach().float())
    assert y.dtype == torch.float16
    scale = want.abs().max()
    assert (y.float() - want).abs().max() < 3e-3 * scale
    y.float().square().mean().backward()
    assert torch.isfinite(x.grad).all()
