"""vig mixer: ViG's official ``GatedLinearAttention.forward`` order written out by hand over
fla's naive recurrent GLA as the peer (odd and even grids, norm weights away from 1), the fast
paths (``chunk``, ``recurrent``) equal to the reference over several chunks, a one-token grid
(shape, finite, gradients), the bidirectional scan mixing the whole grid beyond the
convolution's reach, FLOPs linear in the token count, and config errors.
(Call errors, odd grids, attention maps and the gate: tests/contract.)

Layouts: the mixer takes and returns channels-last ``x [B, h, w, C]``; the by-hand version
permutes to ``[B, C, h, w]`` for the depthwise convolution and flattens the grid row-major.
fla's GLA loop and RMSNorm come from tests/mixers/seq/test_gla.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import attnzoo as az
from attnzoo.testing import randomise
from tests.mixers.seq.test_gla import check_flops_linear_in_length, fla_gla, rms


def vig_by_hand(m: az.Mixer, x: torch.Tensor) -> torch.Tensor:
    """ViG's GatedLinearAttention.forward (training branch) in its order: conv + SiLU, q/k/v and
    direction-wise gates from it, causal GLA on the batch [x, flip(x)] (backward gates flipped
    with it), average, then o*g + RMSNorm(local)*(1-g) and o_proj."""
    H, Kd, (B, h, w, C) = m.cfg.heads, m.cfg.key_dim, x.shape
    local = F.silu(F.conv2d(x.permute(0, 3, 1, 2), m.dwconv.weight, padding=1, groups=C))
    xs = local.flatten(2).transpose(1, 2)  # [B, h*w, C]
    q, k, v = torch.split(xs @ m.qkv_proj.weight.T, [Kd, Kd, C], dim=2)
    fw, bw = m.gk_proj(xs).chunk(2, dim=2)
    gk = F.logsigmoid(torch.cat([fw, bw.flip(1)], dim=0)) / 16
    split = lambda t: rearrange(t, "b n (h d) -> b n h d", h=H)  # noqa: E731
    q, k, v = (split(torch.cat([t, t.flip(1)], dim=0)) for t in (q, k, v))
    o_f, o_b = fla_gla(q, k, v, split(gk)).chunk(2)
    o = (o_f + o_b.flip(1)) / 2
    g = split(torch.sigmoid(m.g_proj(xs)))
    o = rms(o, m.g_norm.weight) * g + rms(split(xs), m.l_norm.weight) * (1 - g)
    return m.o_proj(rearrange(o, "b n h d -> b n (h d)")).reshape(B, h, w, C)


@pytest.mark.parametrize("grid", [(7, 13), (5, 4)])
def test_vig_matches_official_order_by_hand(grid: tuple[int, int]) -> None:
    m = az.build_mixer("vig", d_model=64, num_heads=2, chunk_size=16)
    # the constant parameters are the two RMSNorm weights (ones): redrawn U(0.5, 1.5)
    randomise(m, constant_only=True)
    x = torch.randn(2, *grid, 64)
    torch.testing.assert_close(m(x), vig_by_hand(m, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["chunk", "recurrent"])
def test_vig_impls_match_the_reference(impl: str) -> None:
    x = torch.randn(2, 9, 11, 32)
    ref = az.build_mixer("vig", d_model=32, impl="reference", chunk_size=16)
    m = az.build_mixer("vig", d_model=32, impl=impl, chunk_size=16)
    m.load_state_dict(ref.state_dict())
    torch.testing.assert_close(m(x), ref(x), atol=1e-5, rtol=1e-5)


def test_vig_one_token_grid_shape_finite_gradients() -> None:
    """A 1x1 grid (one token; the 3x3 convolution sees only padding around it). Larger odd
    grids: tests/contract/test_contract_grids.py."""
    m = az.build_mixer("vig", d_model=48, num_heads=2)
    x = torch.randn(2, 1, 1, 48, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_vig_mixes_the_whole_grid() -> None:
    """A change in the bottom-right corner reaches the top-left token (through the reverse scan),
    beyond the 3x3 convolution's reach. ViG's small initialisation (Xavier gain 2**-2.5) makes
    the long-range path ~1e-7 at init, so q/k/v weights are enlarged to lift it above fp32 noise."""
    m = az.build_mixer("vig", d_model=32)
    with torch.no_grad():
        m.qkv_proj.weight.normal_(0.0, 0.5)
    x = torch.randn(1, 6, 6, 32)
    x2 = x.clone()
    x2[:, 5, 5] += 1.0
    assert (m(x)[:, 0, 0] - m(x2)[:, 0, 0]).abs().max() > 1e-3


def test_flops_grow_linearly() -> None:
    check_flops_linear_in_length("vig")


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        ({"num_heads": 5}, ValueError, "vig: key_dim=32 .*num_heads=5"),
        ({"expand_v": 1.0}, TypeError, "unknown config key 'expand_v'"),
    ],
)
def test_bad_config_is_named(kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("vig", d_model=64, **kw)
