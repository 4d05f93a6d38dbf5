"""tnt mixer against ``timm.models.tnt.Block`` (timm 1.0.31) with copied weights, both paths
(``impl="sdpa"`` and ``impl="reference"``), and the fast path against the reference.

Layout conversion (see ``attnzoo.mixers.vision.tnt``): our packed ``x [B, h, w, D + m*c]`` is
timm's pair ``(pixel_embed, patch_embed)`` without the class token::

    patch_embed[:, 1:] = x[..., :D].reshape(B, h*w, D)          # patches row-major
    pixel_embed        = x[..., D:].reshape(B*h*w, m, c)        # m words of width c per patch

and the mixer returns the update: ``x + y`` packs timm's outputs the same way.

What is compared:
- the word stream against ``Block.forward`` itself (a class token row is passed; the inner
  transformer never reads it);
- the patch stream against the same lines of ``Block.forward`` run with timm's own submodules
  (``norm1_proj``, ``proj``, ``norm2_proj``, ``norm_out``, ``attn_out``, ``norm_mlp``, ``mlp``)
  on the patch tokens only: a 2-D mixer has no class token, and timm's block hard-wires one as
  row 0 of ``patch_embed``;
- input gradients through the packed layout, and parameter gradients mapped back to timm's keys;
- the fast path against ``impl="reference"`` (the word grid attended in ``(s, s)`` windows by the
  window op's dense reference, the patches by the softmax op's), forward and every gradient.
"""

from __future__ import annotations

import pytest
import torch
from timm.models.tnt import Block

import attnzoo as az
from attnzoo.mixers.vision.tnt import TNTMixer, load_timm_weights
from attnzoo.testing import randomise
from tests.helpers import assert_all_close, fwd_bwd

IMPLS = ["sdpa", "reference"]


def make_pair(
    c: int = 4,
    words_per_side: int = 2,
    D: int = 24,
    hi: int = 2,
    ho: int = 3,
    impl: str = "auto",
    **kw: object,
) -> tuple[TNTMixer, Block]:
    """A timm block with every parameter randomised (LayerNorm affines too) and our mixer with
    its weights copied in."""
    torch.manual_seed(0)
    m = words_per_side**2
    legacy = bool(kw.get("legacy", False))
    qkv_bias = bool(kw.get("qkv_bias", False))
    peer = Block(
        dim=c,
        dim_out=D,
        num_pixel=m,
        num_heads_in=hi,
        num_heads_out=ho,
        mlp_ratio=float(kw.get("mlp_ratio", 4.0)),
        qkv_bias=qkv_bias,
        legacy=legacy,
    ).eval()
    with torch.no_grad():
        for name, p in peer.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.3)
    ours = az.build_mixer(
        "tnt",
        d_model=D + m * c,
        words_per_side=words_per_side,
        inner_dim=c,
        num_heads_inner=hi,
        num_heads_outer=ho,
        impl=impl,
        **kw,
    )
    assert isinstance(ours, TNTMixer) and ours.cfg.outer_dim == D
    load_timm_weights(ours, peer)
    return ours.eval(), peer


def timm_update(
    peer: Block, x: torch.Tensor, D: int, m: int, outer_mlp: bool = True
) -> torch.Tensor:
    """timm's block on the packed layout, returned as the packed update (output - input)."""
    B, h, w, C = x.shape
    N, c = h * w, (C - D) // m
    pixel = x[..., D:].reshape(B * N, m, c)
    patch = x[..., :D].reshape(B, N, D)
    cls = torch.zeros(B, 1, D)  # only for Block.forward's shapes; the word stream ignores it
    pixel_out, _ = peer(pixel, torch.cat([cls, patch], dim=1))
    # the patch-stream lines of Block.forward, with timm's submodules, minus the class token
    if peer.norm2_proj is None:  # legacy
        fused = peer.proj(peer.norm1_proj(pixel_out).reshape(B, N, -1))
    else:
        fused = peer.norm2_proj(peer.proj(peer.norm1_proj(pixel_out.reshape(B, N, -1))))
    p = patch + fused
    p = p + peer.attn_out(peer.norm_out(p))
    if outer_mlp:
        p = p + peer.mlp(peer.norm_mlp(p))
    out = torch.cat([p, pixel_out.reshape(B, N, m * c)], dim=-1).reshape(B, h, w, C)
    return out - x


CASES = [
    ({}, {}, (3, 5)),
    ({}, {}, (7, 13)),
    ({}, {"legacy": True}, (4, 4)),
    ({}, {"qkv_bias": True, "mlp_ratio": 2.0}, (2, 3)),
    ({}, {"outer_mlp": False}, (5, 2)),
    ({"words_per_side": 3, "c": 6, "hi": 3, "D": 16, "ho": 2}, {}, (3, 3)),
    ({}, {}, (1, 1)),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("pair_kw,kw,grid", CASES)
def test_matches_timm_block_forward_and_input_grad(
    pair_kw: dict, kw: dict, grid: tuple[int, int], impl: str
) -> None:
    ours, peer = make_pair(**pair_kw, **kw, impl=impl)
    D, m, outer_mlp = ours.cfg.outer_dim, ours.cfg.words, ours.cfg.outer_mlp
    x = torch.randn(2, *grid, ours.cfg.d_model)
    g = torch.randn_like(x)  # the same output gradient for both
    got = fwd_bwd(ours, [x], g)
    want = fwd_bwd(lambda t: timm_update(peer, t, D, m, outer_mlp), [x], g)
    assert_all_close(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_word_stream_equals_full_timm_block_call(impl: str) -> None:
    """No submodule re-composition: the word half of x + y is Block.forward's pixel_embed."""
    ours, peer = make_pair(impl=impl)
    x = torch.randn(3, 4, 6, ours.cfg.d_model)
    D, m, c = 24, 4, 4
    cls = torch.randn(3, 1, D)
    pixel_out, patch_out = peer(
        x[..., D:].reshape(-1, m, c), torch.cat([cls, x[..., :D].reshape(3, 24, D)], 1)
    )
    with torch.no_grad():
        z = x + ours(x)
    torch.testing.assert_close(z[..., D:].reshape(-1, m, c), pixel_out, atol=2e-5, rtol=1e-5)
    # the class token does reach the patches through outer attention in timm: the reason the
    # patch stream is compared against the class-token-free sub-computation
    assert (z[..., :D].reshape(3, 24, D) - patch_out[:, 1:]).abs().max() > 1e-3


@pytest.mark.parametrize("impl", IMPLS)
def test_parameter_gradients_map_back_to_timm(impl: str) -> None:
    ours, peer = make_pair(impl=impl)
    x = torch.randn(2, 3, 4, ours.cfg.d_model)
    g = torch.randn_like(x)
    (ours(x) * g).sum().backward()
    (timm_update(peer, x, 24, 4) * g).sum().backward()
    tp = dict(peer.named_parameters())
    for name, p in ours.named_parameters():
        parts = name.split(".")
        if parts[1] == "qkv":
            want = torch.cat(
                [tp[f"{parts[0]}.qk.{parts[2]}"].grad, tp[f"{parts[0]}.v.{parts[2]}"].grad]
            )
        elif parts[0] in ("mlp_in", "mlp"):
            want = tp[f"{parts[0]}.{'fc1' if parts[1] == '0' else 'fc2'}.{parts[2]}"].grad
        else:
            want = tp[name].grad
        torch.testing.assert_close(
            p.grad, want, atol=5e-5, rtol=1e-4, msg=lambda s, n=name: f"{n}: {s}"
        )


FAST_CASES = [
    ({}, (3, 5)),
    ({}, (7, 13)),
    ({"legacy": True}, (4, 4)),
    ({"qkv_bias": True, "mlp_ratio": 2.0, "outer_mlp": False}, (2, 3)),
    ({"words_per_side": 3, "inner_dim": 6, "num_heads_inner": 3, "num_heads_outer": 2}, (3, 2)),
    ({}, (1, 1)),
]


@pytest.mark.parametrize("kw,grid", FAST_CASES)
def test_fast_matches_reference_forward_and_backward(kw: dict, grid: tuple[int, int]) -> None:
    """In float64 (parameter gradients sum over every word: fp32 would test re-association)."""
    ref = randomise(az.build_mixer("tnt", d_model=64, impl="reference", **kw), seed=4).double()
    fast = az.build_mixer("tnt", d_model=64, **kw).double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, *grid, 64, dtype=torch.float64, requires_grad=True)
    got, want = fast(x), ref(x)
    assert_all_close([got], [want], atol=1e-10, rtol=1e-10)
    g = torch.randn_like(got)
    names = ["x"] + [n for n, _ in fast.named_parameters()]
    ga = torch.autograd.grad((got * g).sum(), [x, *fast.parameters()])
    gb = torch.autograd.grad((want * g).sum(), [x, *ref.parameters()])
    for name, p, q in zip(names, ga, gb, strict=True):
        torch.testing.assert_close(p, q, atol=1e-9, rtol=1e-9, msg=lambda s, n=name: f"{n}: {s}")


@pytest.mark.parametrize("impl", IMPLS)
def test_inner_attention_is_per_patch_outer_is_global(impl: str) -> None:
    """Changing the words of patch (0, 0) changes no other patch's words (inner attention stays
    inside a patch) but changes every patch token (fusion, then global outer attention)."""
    ours, _ = make_pair()
    x = torch.randn(1, 4, 5, ours.cfg.d_model)
    x2 = x.clone()
    x2[0, 0, 0, 24:] += torch.randn(16)  # not a constant shift: LayerNorm removes those
    with torch.no_grad():
        d = (ours(x) - ours(x2)).abs()  # [1, 4, 5, C]
    words = d[..., 24:].amax(-1)[0]
    assert words[0, 0] > 1e-3 and words.flatten()[1:].max() == 0
    assert d[..., :24].amax(-1).min() > 1e-5


def test_tnt_s_sizes_from_d_model() -> None:
    cfg = az.build_mixer("tnt", d_model=768, words_per_side=4).cfg
    assert (cfg.words, cfg.inner_width, cfg.outer_dim, cfg.heads_inner, cfg.heads_outer) == (
        16,
        24,
        384,
        4,
        6,
    )
    cfg = az.build_mixer("tnt", d_model=1280, words_per_side=4, num_heads_outer=10).cfg
    assert (cfg.inner_width, cfg.outer_dim, cfg.heads_inner) == (40, 640, 4)
    for d in (32, 48, 64):
        cfg = az.build_mixer("tnt", d_model=d).cfg
        assert cfg.words == 4 and cfg.outer_dim == d // 2 and cfg.inner_width == d // 8


def test_load_timm_weights_errors() -> None:
    ours, peer = make_pair()
    legacy_peer = Block(
        dim=4, dim_out=24, num_pixel=4, num_heads_in=2, num_heads_out=3, legacy=True
    )
    with pytest.raises(
        ValueError, match="load_timm_weights\\(tnt\\): shape of 'norm1_proj.weight' is \\(16,\\)"
    ):
        load_timm_weights(ours, legacy_peer)
    wide = Block(dim=8, dim_out=24, num_pixel=4, num_heads_in=2, num_heads_out=3)
    with pytest.raises(
        ValueError, match="shape of 'norm_in.weight' is \\(4,\\) in the mixer but \\(8,\\)"
    ):
        load_timm_weights(ours, wide)
    biased = Block(dim=4, dim_out=24, num_pixel=4, num_heads_in=2, num_heads_out=3, qkv_bias=True)
    with pytest.raises(ValueError, match="without a place here: \\['attn_in.qk.bias'"):
        load_timm_weights(ours, biased)


def test_flops() -> None:
    m = az.build_mixer("tnt", d_model=64, num_heads_outer=2)
    B, N, mw, c, D = 2, 12, 4, 8, 32
    inner = 2 * B * N * mw * (c * 3 * c + c * c + 2 * c * 4 * c) + 2 * B * N * mw * mw * 2 * c
    outer = 2 * B * N * (4 * D * D + 2 * D * 4 * D) + 2 * B * N * N * 2 * D
    assert m.flops(B, N) == inner + 2 * B * N * mw * c * D + outer


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        ({"inner_dim": 8}, ValueError, "tnt: d_model=32 must exceed words \\* inner_dim = 4 \\* 8"),
        ({"words_per_side": 0}, ValueError, "tnt: words_per_side must be >= 1, got 0"),
        ({"num_heads_inner": 3}, ValueError, "num_heads_inner=3 does not divide its width 4"),
        ({"num_heads_outer": 5}, ValueError, "num_heads_outer=5 does not divide its width 16"),
        ({"mlp_ratio": 0.0}, ValueError, "tnt: mlp_ratio must be > 0, got 0.0"),
        ({"norm_eps": 0.0}, ValueError, "tnt: norm_eps must be > 0, got 0.0"),
        ({"legacy": 1}, TypeError, "config 'legacy' must be bool"),
        ({"causal": True}, ValueError, "tnt does not support causal=True"),
        ({"word_per_side": 2}, TypeError, "did you mean 'words_per_side'"),
        ({"impl": "flash"}, TypeError, "config 'impl' must be 'auto' \\| 'reference' \\| 'sdpa'"),
    ],
)
def test_bad_config_is_named(kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        az.build_mixer("tnt", d_model=32, **kw)
