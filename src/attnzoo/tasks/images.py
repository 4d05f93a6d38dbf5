"""Synthetic shapes: a seeded small-image classification task for the 2-D mixers.

Our own generator (no paper reproduces it; nothing is downloaded). It stands in for small
natural-image sets on CPU in the spirit of the synthetic-shape probes common in vision papers;
the class is the shape, never its colour, size, position or texture.

One image, ``S = image_size``, pixel centres at ``(j + 0.5, i + 0.5)`` for column ``j``, row
``i`` (rows grow downward):

- label ``k`` uniform over ``num_classes`` classes, the first ``num_classes`` of :data:`SHAPES`;
- half-size ``r ~ U[min_scale·S, max_scale·S]`` pixels, centre ``(cx, cy)`` uniform in
  ``[r, S - r]²`` so the shape's ``2r x 2r`` box lies inside the image;
- with ``dx = u - cx``, ``dy = v - cy`` the shape's pixels are (see :func:`shape_masks`):
  circle ``dx² + dy² <= r²``; square ``max(|dx|, |dy|) <= 0.7 r``; triangle (apex up)
  ``-r <= dy <= r`` and ``|dx| <= (dy + r) / 2``; cross ``min(|dx|, |dy|) <= r/3`` and
  ``max(|dx|, |dy|) <= r``; ring ``0.55 r <= sqrt(dx² + dy²) <= r``; diamond
  ``|dx| + |dy| <= r``;
- colours: one RGB colour uniform in ``[0, 0.4]³`` and one in ``[0.6, 1]³``; the shape takes
  the light one and the background the dark one, or the reverse, each with probability 1/2
  (so brightness says nothing about the class, and the two differ by >= 0.2 per channel);
- texture: a grey plane wave ``texture · sin(2π f (u cos θ + v sin θ) / S + φ)`` with
  ``f ~ U[1, 4]`` cycles per image, ``θ ~ U[0, π)``, ``φ ~ U[0, 2π)``, added to every channel,
  then i.i.d. ``N(0, noise_std²)`` per pixel and channel; finally clamped to ``[0, 1]``.

Images are ``[B, 3, S, S]`` float32 in ``[0, 1]`` (timm layout), labels ``[B]`` int64.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnzoo.models import create_model
from attnzoo.tasks.checks import check_float, check_int
from attnzoo.tasks.registry import QualityTask, TaskParts, parse_config, register_task

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "diamond")
#: smallest half-size in pixels at which any two of the six masks, drawn with the same
#: geometry, differ in >= 15% of their union's pixels (checked on a grid of sub-pixel centres)
MIN_RADIUS_PX = 4.0


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
    """Parameters of the shapes generator.

    Attributes:
        image_size: side ``S`` in pixels (>= 8).
        num_classes: the first ``K`` shapes of :data:`SHAPES`, ``2 <= K <= 6``.
        min_scale, max_scale: half-size range as a fraction of ``S`` (``max_scale <= 0.5``;
            ``min_scale · S >= 4`` pixels so the shapes stay distinct).
        noise_std: per-pixel Gaussian noise. texture: amplitude of the plane-wave texture.
    """

    image_size: int = 32
    num_classes: int = 4
    min_scale: float = 0.2
    max_scale: float = 0.4
    noise_std: float = 0.05
    texture: float = 0.1

    def __post_init__(self) -> None:
        owner = "ShapesConfig"
        check_int(owner, "image_size", self.image_size, 8)
        check_int(owner, "num_classes", self.num_classes, 2)
        for name, hi in (("min_scale", 0.5), ("max_scale", 0.5), ("noise_std", 1.0)):
            object.__setattr__(self, name, check_float(owner, name, getattr(self, name), 0, hi))
        object.__setattr__(self, "texture", check_float(owner, "texture", self.texture, 0, 0.5))
        self.validate()

    def validate(self) -> None:
        owner = "ShapesConfig"
        if self.num_classes > len(SHAPES):
            raise ValueError(
                f"{owner}: num_classes must be <= {len(SHAPES)} (one per shape in {SHAPES}), "
                f"got {self.num_classes}"
            )
        if self.min_scale > self.max_scale:
            raise ValueError(
                f"{owner}: min_scale must be <= max_scale={self.max_scale}, got {self.min_scale}"
            )
        if self.min_scale * self.image_size < MIN_RADIUS_PX:
            raise ValueError(
                f"{owner}: min_scale * image_size must be >= {MIN_RADIUS_PX} pixels, got "
                f"min_scale={self.min_scale} with image_size={self.image_size}"
            )


@dataclasses.dataclass(frozen=True)
class Batch:
    """One batch of shape images.

    Attributes:
        images: ``[B, 3, S, S]`` float32 in ``[0, 1]``.
        labels: ``[B]`` int64 class ids (index into :data:`SHAPES`).
        masks: ``[B, S, S]`` bool, the shape's pixels.
        centers: ``[B, 2]`` (cx, cy) in pixels. radii: ``[B]`` half-sizes ``r`` in pixels.
    """

    images: Tensor  # [B, 3, S, S]
    labels: Tensor  # [B]
    masks: Tensor  # [B, S, S]
    centers: Tensor  # [B, 2]
    radii: Tensor  # [B]

    @property
    def targets(self) -> Tensor:
        """Alias of ``labels`` (the other tasks' name)."""
        return self.labels


def shape_masks(labels: Tensor, centers: Tensor, radii: Tensor, image_size: int) -> Tensor:
    """Pixels covered by each shape (definitions in the module docstring).

    Shapes:
        labels: ``[B]``; centers: ``[B, 2]`` (cx, cy); radii: ``[B]``; returns ``[B, S, S]`` bool.
    """
    grid = torch.arange(image_size, dtype=torch.float32) + 0.5  # [S]
    dx = grid[None, None, :] - centers[:, 0, None, None]  # [B, 1, S]
    dy = grid[None, :, None] - centers[:, 1, None, None]  # [B, S, 1]
    r = radii[:, None, None]  # [B, 1, 1]
    ax, ay = dx.abs(), dy.abs()
    dist = torch.sqrt(dx**2 + dy**2)  # [B, S, S]
    masks = torch.stack(
        [
            dist <= r,
            torch.maximum(ax, ay) <= 0.7 * r,
            (dy >= -r) & (dy <= r) & (ax <= (dy + r) / 2),
            (torch.minimum(ax, ay) <= r / 3) & (torch.maximum(ax, ay) <= r),
            (dist >= 0.55 * r) & (dist <= r),
            ax + ay <= r,
        ]
    )  # [6, B, S, S]
    idx = labels[None, :, None, None].expand(1, -1, image_size, image_size)
    return masks.gather(0, idx)[0]


def make_batch(cfg: ShapesConfig, batch_size: int, generator: torch.Generator) -> Batch:
    """Draw ``batch_size`` images; identical for identical generator states.

    Shapes:
        images ``[B, 3, S, S]``, labels ``[B]`` (see :class:`Batch`).
    """
    check_int("images.make_batch", "batch_size", batch_size, 1)
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"images.make_batch: generator must be a torch.Generator, got {generator!r}"
        )
    bsz, size = batch_size, cfg.image_size

    def uniform(lo: float | Tensor, hi: float | Tensor, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=generator)

    labels = torch.randint(cfg.num_classes, (bsz,), generator=generator)  # [B]
    radii = uniform(cfg.min_scale * size, cfg.max_scale * size, bsz)  # [B]
    centers = uniform(radii[:, None], size - radii[:, None], bsz, 2)  # [B, 2]
    masks = shape_masks(labels, centers, radii, size)  # [B, S, S]

    dark, light = uniform(0.0, 0.4, bsz, 3), uniform(0.6, 1.0, bsz, 3)  # [B, 3] each
    swap = torch.rand(bsz, 1, generator=generator) < 0.5  # [B, 1]
    fg, bg = torch.where(swap, dark, light), torch.where(swap, light, dark)  # [B, 3] each
    images = torch.where(masks[:, None], fg[:, :, None, None], bg[:, :, None, None])

    freq = uniform(1.0, 4.0, bsz)  # [B]
    theta, phase = uniform(0.0, math.pi, bsz), uniform(0.0, 2 * math.pi, bsz)  # [B] each
    grid = torch.arange(size, dtype=torch.float32) + 0.5  # [S]
    proj = (
        grid[None, None, :] * torch.cos(theta)[:, None, None]
        + grid[None, :, None] * torch.sin(theta)[:, None, None]
    )  # [B, S, S]
    wave = torch.sin(2 * math.pi * freq[:, None, None] * proj / size + phase[:, None, None])
    images = images + cfg.texture * wave[:, None]  # [B, 3, S, S]
    noise = torch.randn(bsz, 3, size, size, generator=generator)  # [B, 3, S, S]
    images = (images + cfg.noise_std * noise).clamp(0.0, 1.0)
    return Batch(images, labels, masks, centers, radii)


def _predictions(output: Tensor, labels: Tensor) -> Tensor:
    if output.shape == labels.shape:
        return output
    if output.dim() == 2 and output.shape[0] == labels.shape[0]:
        return output.argmax(dim=-1)
    raise ValueError(
        f"images.metric: output must be logits [B, K] or predictions [B] with "
        f"B={labels.shape[0]}, got {tuple(output.shape)}"
    )


def metric(output: Tensor, targets: Tensor) -> float:
    """Top-1 accuracy. output: logits ``[B, K]`` or class ids ``[B]``; targets: ``[B]``."""
    return float((_predictions(output, targets) == targets).double().mean())


def loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy. logits ``[B, K]``, targets ``[B]`` -> scalar."""
    return F.cross_entropy(logits, targets)


# ---- the quality bench's adapters (shapes here, digits in its module) ------------------------
#: metaformer_tiny's total stride: the smallest image side it accepts
MIN_IMAGE_SIZE = 32


def image_model(mixer: str, d_model: int, num_layers: int, num_classes: int, in_chans: int) -> torch.nn.Module:  # fmt: skip
    """``metaformer_tiny`` with ``dims = (d, 2d, 4d, 8d)`` and ``depths = (1, 1, num_layers, 1)``.

    Shapes: ``[B, in_chans, H, W] -> [B, num_classes]``."""
    return create_model("metaformer_tiny", mixer=mixer, num_classes=num_classes, in_chans=in_chans,
                        dims=tuple(d_model * 2**i for i in range(4)),
                        depths=(1, 1, num_layers, 1))  # fmt: skip


def check_image_size(owner: str, size: int) -> None:
    if size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"{owner}: image_size must be >= {MIN_IMAGE_SIZE} (metaformer_tiny downsamples by "
            f"{MIN_IMAGE_SIZE}), got {size}"
        )


def _shapes(mixer: str, d_model: int, num_layers: int, settings: dict) -> TaskParts:
    cfg = parse_config("shapes", ShapesConfig, settings)
    check_image_size("shapes", cfg.image_size)

    def batch_fn(batch_size: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        b = make_batch(cfg, batch_size, g)
        return b.images, b.labels

    return TaskParts(lambda: image_model(mixer, d_model, num_layers, cfg.num_classes, 3), batch_fn,
                     loss, metric, dataclasses.asdict(cfg), None)  # fmt: skip


def image_tokens(cfg: dict) -> int | None:
    """Tokens of metaformer_tiny's first stage after its stride-4 stem."""
    return (int(cfg["image_size"]) // 4) ** 2 if "image_size" in cfg else None


register_task(QualityTask("shapes", "synthetic shapes, 32x32 RGB, metaformer_tiny (top-1 "
                          "accuracy)", False, _shapes, patterns=("noncausal-self",),
                          tokens=image_tokens))  # fmt: skip
