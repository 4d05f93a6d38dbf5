"""Synthetic shapes: determinism, class balance, geometry and colour laws, class separation."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from attnzoo.tasks import images as I
from attnzoo.tasks.images import SHAPES, ShapesConfig

CFG = ShapesConfig()
PLAIN = ShapesConfig(noise_std=0.0, texture=0.0)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def brute_mask(shape: str, cx: float, cy: float, r: float, size: int) -> torch.Tensor:
    """Pixel-by-pixel restatement of the module docstring's shape definitions."""
    out = torch.zeros(size, size, dtype=torch.bool)
    for i in range(size):
        for j in range(size):
            dx, dy = j + 0.5 - cx, i + 0.5 - cy
            dist = math.hypot(dx, dy)
            out[i, j] = {
                "circle": dist <= r,
                "square": max(abs(dx), abs(dy)) <= 0.7 * r,
                "triangle": -r <= dy <= r and abs(dx) <= (dy + r) / 2,
                "cross": min(abs(dx), abs(dy)) <= r / 3 and max(abs(dx), abs(dy)) <= r,
                "ring": 0.55 * r <= dist <= r,
                "diamond": abs(dx) + abs(dy) <= r,
            }[shape]
    return out


def test_determinism_shapes_dtypes() -> None:
    a, b, c = (I.make_batch(CFG, 16, gen(s)) for s in (1, 1, 2))
    for name in ("images", "labels", "masks", "centers", "radii"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (16, 3, 32, 32) and a.images.dtype == torch.float32
    assert a.labels.shape == (16,) and a.labels.dtype == torch.int64
    assert a.masks.shape == (16, 32, 32) and a.masks.dtype == torch.bool
    assert a.images.min() >= 0 and a.images.max() <= 1
    assert a.targets is a.labels


@pytest.mark.parametrize("k", [2, 4, 6])
def test_class_balance(k: int) -> None:
    cfg = ShapesConfig(num_classes=k, image_size=16, min_scale=0.25)
    labels = I.make_batch(cfg, 6000, gen(3)).labels
    counts = torch.bincount(labels, minlength=k).double()
    assert labels.min() >= 0 and labels.max() < k and len(counts) == k
    sd = (6000 * (1 / k) * (1 - 1 / k)) ** 0.5
    assert ((counts - 6000 / k).abs() < 5 * sd).all(), counts


def test_masks_match_definitions_and_fit_inside() -> None:
    cfg = ShapesConfig(num_classes=6, image_size=16, min_scale=0.25)
    batch = I.make_batch(cfg, 60, gen(4))
    for b in range(60):
        cx, cy = batch.centers[b].tolist()
        r = float(batch.radii[b])
        assert r - 1e-4 <= cx <= 16 - r + 1e-4 and r - 1e-4 <= cy <= 16 - r + 1e-4
        shape = SHAPES[int(batch.labels[b])]
        want = brute_mask(shape, cx, cy, r, 16)
        # float rounding may flip a pixel lying exactly on a boundary
        assert (batch.masks[b] ^ want).sum() <= 1, (b, shape)
        assert batch.masks[b].sum() > 0


def test_geometry_laws() -> None:
    batch = I.make_batch(CFG, 4000, gen(5))
    lo, hi = CFG.min_scale * 32, CFG.max_scale * 32
    r = batch.radii
    assert r.min() >= lo and r.max() <= hi
    assert abs(r.mean().item() - (lo + hi) / 2) < 5 * (hi - lo) / math.sqrt(12 * 4000)
    # centre uniform on [r, S - r]: its position within that interval is U[0, 1]
    rel = (batch.centers - r[:, None]) / (32 - 2 * r[:, None])  # [B, 2]
    assert rel.min() >= 0 and rel.max() <= 1
    assert (rel.mean(0) - 0.5).abs().max() < 5 / math.sqrt(12 * 4000)
    assert abs(torch.corrcoef(rel.T)[0, 1].item()) < 0.05
    # size and position are independent of the class
    for k in range(CFG.num_classes):
        sel = batch.labels == k
        assert abs(r[sel].mean().item() - (lo + hi) / 2) < 0.3


def test_colours_two_tone_without_class_information() -> None:
    batch = I.make_batch(PLAIN, 3000, gen(6))
    img, masks = batch.images, batch.masks
    for b in range(50):  # exactly two colours, >= 0.2 apart in every channel
        inside = img[b][:, masks[b]]  # [3, n_in]
        outside = img[b][:, ~masks[b]]  # [3, n_out]
        assert (inside == inside[:, :1]).all() and (outside == outside[:, :1]).all()
        assert ((inside[:, 0] - outside[:, 0]).abs() >= 0.2).all()
    # the shape is the light one half of the time
    grey = img.mean(dim=1)  # [B, S, S]
    fg_grey = (grey * masks).sum(dim=(1, 2)) / masks.sum(dim=(1, 2))  # [B]
    light = (fg_grey > 0.5).double()
    assert abs(light.mean().item() - 0.5) < 5 * math.sqrt(0.25 / 3000)
    for k in range(PLAIN.num_classes):  # ... independently of the class
        assert abs(light[batch.labels == k].mean().item() - 0.5) < 0.07, k
    # mean brightness carries no class information (fg and bg are exchangeable)
    mean = img.mean(dim=(1, 2, 3))
    for k in range(PLAIN.num_classes):
        m = mean[batch.labels == k]
        assert abs(m.mean().item() - 0.5) < 5 * m.std().item() / math.sqrt(len(m)), k


def test_texture_and_noise_are_added() -> None:
    plain, tex = (I.make_batch(c, 200, gen(7)) for c in (PLAIN, ShapesConfig(noise_std=0.0)))
    noisy = I.make_batch(ShapesConfig(texture=0.0, noise_std=0.05), 200, gen(7))
    assert torch.equal(plain.masks, tex.masks) and torch.equal(plain.masks, noisy.masks)
    diff = tex.images - plain.images  # texture only, up to clamping
    assert diff.abs().max() <= 0.1 + 1e-6 and diff.abs().mean() > 0.03
    # the texture is the same grey wave in every channel (where nothing was clamped)
    free = ((tex.images > 0) & (tex.images < 1)).all(dim=1)  # [B, S, S]
    d = diff.permute(0, 2, 3, 1)[free]  # [count, 3]
    assert (d - d[:, :1]).abs().max() < 1e-5
    resid = (noisy.images - plain.images)[(noisy.images > 0) & (noisy.images < 1)]
    assert abs(resid.std().item() - 0.05) < 0.005 and abs(resid.mean().item()) < 0.003


@pytest.mark.parametrize("r", [I.MIN_RADIUS_PX, 5.0, 6.4, 9.0, 12.8])
def test_classes_differ_by_construction(r: float) -> None:
    """With identical geometry (any sub-pixel centre) every pair of shapes differs in >= 15%
    of their union's pixels, down to the smallest radius the config allows."""
    labels = torch.arange(len(SHAPES))
    for ox, oy in itertools.product([0.0, 0.25, 0.5, 0.8], repeat=2):
        centers = torch.tensor([[16 + ox, 16 + oy]] * 6)
        masks = I.shape_masks(labels, centers, torch.full((6,), r), 32)
        for a, b in itertools.combinations(range(6), 2):
            sym = (masks[a] ^ masks[b]).sum().item()
            union = (masks[a] | masks[b]).sum().item()
            assert sym >= 0.15 * union, (SHAPES[a], SHAPES[b], ox, oy, sym, union)


def test_metric_and_loss() -> None:
    labels = torch.tensor([0, 1, 2, 3])
    logits = torch.nn.functional.one_hot(labels, 4).float()
    assert I.metric(logits, labels) == 1.0
    assert I.metric(torch.tensor([0, 1, 0, 0]), labels) == 0.5
    assert I.loss(logits * 100, labels) < 1e-6
    with pytest.raises(ValueError, match=r"logits \[B, K\] or predictions \[B\] with B=4"):
        I.metric(torch.zeros(3, 4), labels)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match=r"num_classes must be <= 6 .*got 7"):
        ShapesConfig(num_classes=7)
    with pytest.raises(ValueError, match="num_classes must be >= 2, got 1"):
        ShapesConfig(num_classes=1)
    with pytest.raises(ValueError, match="min_scale must be <= max_scale=0.3, got 0.4"):
        ShapesConfig(min_scale=0.4, max_scale=0.3)
    with pytest.raises(ValueError, match=r"max_scale must be a finite float in \[0, 0.5\]"):
        ShapesConfig(max_scale=0.6)
    with pytest.raises(ValueError, match=r"min_scale \* image_size must be >= 4.0 pixels"):
        ShapesConfig(image_size=8, min_scale=0.2)
    with pytest.raises(ValueError, match="image_size must be >= 8, got 4"):
        ShapesConfig(image_size=4)
    with pytest.raises(TypeError, match="texture must be a float, got 'x'"):
        ShapesConfig(texture="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        I.make_batch(CFG, 0, gen(0))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        I.make_batch(CFG, 2, 7)  # type: ignore[arg-type]
