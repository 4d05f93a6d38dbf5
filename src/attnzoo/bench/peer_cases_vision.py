"""Vision mixers vs timm's blocks (issue 5's sizes: forward, fp32, batch 8, same weights).

Each side runs on its own native layout (ours channels-last ``[B, h, w, C]``; timm's
``[B, N, C]`` tokens, ``[B, C, H, W]`` maps or window batches); the reshapes that are free views
are done outside the timing, anything timm's own block does inside its forward (padding, window
partition) is timed on its side, as a user of that block pays it. Weights are copied into ours
with each mechanism file's documented ``load_timm_weights``; outputs are compared in one layout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import attnzoo as az
from attnzoo.bench.peers import PeerCase, PeerPair, register_case

BATCH = 8
TIMM = ("timm", "torchvision")


def _randomise(m: nn.Module, g: torch.Generator) -> nn.Module:
    """Non-trivial biases (timm initialises many to zero, which would hide a bias mapping bug)."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return m.eval()


def _flops(name: str, mixer: az.Mixer, h: int, w: int) -> int:
    return int(az.get_spec(name).flops(mixer.cfg, BATCH, h * w, None, None))


def _tokens(name: str, timm_cls: Callable[[], nn.Module], side: int, C: int,
            g: torch.Generator, **cfg: object) -> PeerPair:  # fmt: skip
    """A mixer whose timm peer takes ``[B, N, C]`` tokens (row-major grid)."""
    from importlib import import_module

    theirs = _randomise(timm_cls(), g)
    ours = az.build_mixer(name, d_model=C, **cfg).eval()
    import_module(type(ours).__module__).load_timm_weights(ours, theirs)
    x = torch.randn(BATCH, side, side, C, generator=g)
    tokens = x.reshape(BATCH, side * side, C)  # a view: no copy
    return PeerPair(
        ours=lambda: ours(x),
        peer=lambda: theirs(tokens),
        flops=_flops(name, ours, side, side),
        size=f"B={BATCH} {side}x{side}x{C}",
        check=lambda: (ours(x), theirs(tokens).view(x.shape)),
    )


def _davit_channel(side: int, g: torch.Generator) -> PeerPair:
    from timm.models.davit import ChannelAttention

    return _tokens("davit_channel", lambda: ChannelAttention(96, num_heads=3, qkv_bias=True),
                   side, 96, g, num_heads=3)  # fmt: skip


def _gpsa(side: int, g: torch.Generator) -> PeerPair:
    from timm.models.convit import GPSA

    def make() -> nn.Module:
        m = GPSA(192, num_heads=4, qkv_bias=False)
        m.local_init()  # as ConViT does
        return m

    return _tokens("gpsa", make, side, 192, g, num_heads=4)


def _davit_window(side: int, g: torch.Generator) -> PeerPair:
    from timm.models.davit import WindowAttention, window_partition, window_reverse

    C, s = 96, 7
    theirs = _randomise(WindowAttention(C, (s, s), num_heads=3, qkv_bias=True), g)
    ours = az.build_mixer("davit_window", d_model=C, num_heads=3, window_size=s).eval()
    from attnzoo.mixers.vision.davit import load_timm_weights

    load_timm_weights(ours, theirs)
    x = torch.randn(BATCH, side, side, C, generator=g)

    def peer() -> Tensor:  # timm's SpatialBlock around its WindowAttention: pad, partition, reverse
        pad_r, pad_b = (s - side % s) % s, (s - side % s) % s
        xp = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = xp.shape[1:3]
        out = theirs(window_partition(xp, (s, s)).view(-1, s * s, C)).view(-1, s, s, C)
        return window_reverse(out, (s, s), Hp, Wp)[:, :side, :side]

    return PeerPair(ours=lambda: ours(x), peer=peer, flops=_flops("davit_window", ours, side, side),
                    size=f"B={BATCH} {side}x{side}x{C} window {s}")  # fmt: skip


def _tnt(side: int, g: torch.Generator) -> PeerPair:
    """TNT-S shapes: outer dim 384, inner dim 24, 4x4 words per patch. Ours packs both streams
    into one ``[B, h, w, 384 + 16*24]`` map; timm's ``Block`` takes ``(pixel_embed, patch_embed)``
    with a class token row (one extra patch token on its side). Equality is checked on the word
    stream, which timm's full forward computes exactly as ours (its patch stream mixes in the
    class token, which a 2-D mixer has none of: tests/mixers/test_tnt.py compares that stream
    against timm's own submodules)."""
    from timm.models.tnt import Block

    from attnzoo.mixers.vision.tnt import load_timm_weights

    D, c, m = 384, 24, 16
    theirs = _randomise(Block(dim=c, dim_out=D, num_pixel=m, num_heads_in=4, num_heads_out=6), g)
    ours = az.build_mixer("tnt", d_model=D + m * c, words_per_side=4, inner_dim=c,
                          num_heads_inner=4, num_heads_outer=6).eval()  # fmt: skip
    load_timm_weights(ours, theirs)
    N = side * side
    x = torch.randn(BATCH, side, side, D + m * c, generator=g)
    pixel = x[..., D:].reshape(BATCH * N, m, c)
    patch = torch.cat([torch.zeros(BATCH, 1, D), x[..., :D].reshape(BATCH, N, D)], dim=1)

    def check() -> tuple[Tensor, Tensor]:
        words = (x + ours(x))[..., D:].reshape(BATCH * N, m, c)
        return words, theirs(pixel, patch)[0]

    return PeerPair(ours=lambda: ours(x), peer=lambda: theirs(pixel, patch),
                    flops=_flops("tnt", ours, side, side),
                    size=f"B={BATCH} {N} patches, outer {D} / inner {c}", check=check)  # fmt: skip


def _halo(side: int, g: torch.Generator) -> PeerPair:
    """timm ``HaloAttn`` (its default 8 heads, block 8, halo 3) on ``[B, C, H, W]``; the
    permutes to and from timm's layout are free views outside the timing."""
    from timm.layers.halo_attn import HaloAttn

    from attnzoo.mixers.vision.halo import load_timm_weights

    C = 64
    theirs = _randomise(HaloAttn(C, num_heads=8, block_size=8, halo_size=3), g)
    ours = az.build_mixer("halo", d_model=C, num_heads=8, block_size=8, halo_size=3).eval()
    load_timm_weights(ours, theirs)
    x = torch.randn(BATCH, side, side, C, generator=g)
    x_nchw = x.permute(0, 3, 1, 2)
    return PeerPair(ours=lambda: ours(x), peer=lambda: theirs(x_nchw),
                    flops=_flops("halo", ours, side, side), size=f"B={BATCH} {side}x{side}x{C}",
                    check=lambda: (ours(x), theirs(x_nchw).permute(0, 2, 3, 1)))  # fmt: skip


def _outlook(side: int, g: torch.Generator) -> PeerPair:
    """timm ``volo.OutlookAttention`` (VOLO-D1 stage 1: 6 heads, kernel 3, stride 2); it takes
    channels-last ``[B, H, W, C]`` like ours."""
    from timm.models.volo import OutlookAttention

    from attnzoo.mixers.vision.outlook import load_timm_weights

    C = 192
    theirs = _randomise(OutlookAttention(C, 6, kernel_size=3, padding=1, stride=2), g)
    ours = az.build_mixer("outlook", d_model=C, num_heads=6, kernel_size=3, stride=2).eval()
    load_timm_weights(ours, theirs)
    x = torch.randn(BATCH, side, side, C, generator=g)
    return PeerPair(ours=lambda: ours(x), peer=lambda: theirs(x),
                    flops=_flops("outlook", ours, side, side), size=f"B={BATCH} {side}x{side}x{C}")  # fmt: skip


register_case(PeerCase("halo/timm", "halo", "timm halo_attn.HaloAttn", TIMM, _halo, (32, 64),
                       (32,), smoke_size=16))  # fmt: skip
register_case(PeerCase("outlook/timm", "outlook", "timm volo.OutlookAttention", TIMM, _outlook,
                       (28, 56), (28,), smoke_size=7))  # fmt: skip
register_case(PeerCase("davit_channel/timm", "davit_channel", "timm davit.ChannelAttention", TIMM,
                       _davit_channel, (28, 56), (56,), smoke_size=9))  # fmt: skip
register_case(PeerCase("davit_window/timm", "davit_window", "timm davit.WindowAttention (+ pad, "
                       "partition, reverse)", TIMM, _davit_window, (28, 56), (56,), smoke_size=9))  # fmt: skip
register_case(PeerCase("gpsa/timm", "gpsa", "timm convit.GPSA (local_init)", TIMM, _gpsa,
                       (14, 28), (14,), smoke_size=5))  # fmt: skip
register_case(PeerCase("tnt/timm", "tnt", "timm tnt.Block", TIMM, _tnt, (14,), (14,), smoke_size=3))  # fmt: skip
