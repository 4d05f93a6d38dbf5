"""The 8x8 handwritten digits (UCI, via scikit-learn), upsampled for the 2-D mixers.

Data: ``sklearn.datasets.load_digits`` (1797 grey images of 8x8 pixels with values ``0..16``,
ten classes, 174..183 images each). It ships inside scikit-learn: nothing is downloaded. Source:
Alpaydin and Kaynak, "Optical Recognition of Handwritten Digits", UCI ML repository, 1998.
https://archive.ics.uci.edu/dataset/80

Everything below is fixed by :class:`DigitsConfig` (no global state):

- **Split** (stratified, seeded): for each class, its dataset indices in ascending order are
  permuted with ``torch.randperm`` under ``torch.Generator().manual_seed(split_seed)`` (classes
  in order 0..9, one generator); the first ``round(test_fraction · count)`` go to the test split,
  the rest to the train split. Each split is then sorted by dataset index.
- **Upsampling**: pixel values are divided by 16 (to ``[0, 1]``), then resized from 8x8 to
  ``S x S`` (``S = image_size``) by bilinear interpolation with ``align_corners=False`` (each
  source pixel is a cell of ``(S/8)²`` target pixels, sampled at cell centres; no antialiasing,
  this is upsampling). ``S = 32`` is the smallest side the MetaFormer backbones accept.
- **Normalisation**: both splits are standardised with the train split's scalar pixel mean and
  standard deviation, measured after upsampling (so the train split has mean 0 and std 1).

Images are ``[B, 1, S, S]`` float32 (timm layout, one channel), labels ``[B]`` int64.
:func:`make_batch` samples the train split uniformly with replacement from a
``torch.Generator``; evaluation uses the whole test split (:func:`load_split` ``("test")``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from attnzoo.extras import require
from attnzoo.tasks.checks import check_float, check_int
from attnzoo.tasks.images import check_image_size, image_model, image_tokens, loss, metric
from attnzoo.tasks.registry import QualityTask, TaskParts, parse_config, register_task

__all__ = ["NUM_CLASSES", "Batch", "DigitsConfig", "load_split", "loss", "make_batch", "metric"]

NUM_CLASSES = 10
SOURCE_SIZE = 8
MAX_VALUE = 16.0
Split = Literal["train", "test"]


@dataclasses.dataclass(frozen=True)
class DigitsConfig:
    """Parameters of the digits task.

    Attributes:
        image_size: side ``S`` of the upsampled images (``>= 8``).
        test_fraction: share of every class held out for the test split, in ``(0, 1)``.
        split_seed: seeds the stratified train/test split.
    """

    image_size: int = 32
    test_fraction: float = 0.2
    split_seed: int = 0

    def __post_init__(self) -> None:
        owner = "DigitsConfig"
        check_int(owner, "image_size", self.image_size, SOURCE_SIZE)
        frac = check_float(owner, "test_fraction", self.test_fraction, 0.0, 1.0)
        if not 0.0 < frac < 1.0:
            raise ValueError(f"{owner}: test_fraction must be in (0, 1), got {frac}")
        object.__setattr__(self, "test_fraction", frac)
        check_int(owner, "split_seed", self.split_seed, 0)


@dataclasses.dataclass(frozen=True)
class Batch:
    """One batch of digits.

    Attributes:
        images: ``[B, 1, S, S]`` float32, standardised with the train split's statistics.
        labels: ``[B]`` int64 digit classes ``0..9``.
        indices: ``[B]`` int64 row indices into ``load_digits()`` (which images these are).
    """

    images: Tensor  # [B, 1, S, S]
    labels: Tensor  # [B]
    indices: Tensor  # [B]

    @property
    def targets(self) -> Tensor:
        """Alias of ``labels`` (the other tasks' name)."""
        return self.labels


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[Tensor, Tensor]:
    """All 1797 images ``[N, 8, 8]`` in ``[0, 16]`` and labels ``[N]`` (scikit-learn's order)."""
    require("tasks", "the digits task (its images ship inside scikit-learn)", ("sklearn",))
    from sklearn.datasets import load_digits  # imported on first use: it takes a second

    data = load_digits()
    images = torch.from_numpy(data.images).float()  # [N, 8, 8]
    return images, torch.from_numpy(data.target).long()


def split_indices(cfg: DigitsConfig) -> tuple[Tensor, Tensor]:
    """Dataset indices of the (train, test) splits, each ascending (rule in the module docstring).

    Shapes:
        returns ``[N_train]`` and ``[N_test]`` int64, disjoint, together ``0 .. 1796``.
    """
    _, labels = _raw()
    g = torch.Generator().manual_seed(cfg.split_seed)
    train, test = [], []
    for c in range(NUM_CLASSES):
        idx = torch.nonzero(labels == c).flatten()  # [n_c], ascending
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = round(cfg.test_fraction * len(idx))
        test.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def _upsample(raw: Tensor, size: int) -> Tensor:
    """``[N, 8, 8]`` in ``[0, 16]`` -> ``[N, 1, S, S]`` in ``[0, 1]`` (bilinear, cell centres)."""
    x = (raw / MAX_VALUE)[:, None]  # [N, 1, 8, 8]
    if size == SOURCE_SIZE:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


@functools.lru_cache(maxsize=8)
def _splits(cfg: DigitsConfig) -> dict[str, Batch]:
    raw, labels = _raw()
    train_idx, test_idx = split_indices(cfg)
    train = _upsample(raw[train_idx], cfg.image_size)  # [N_train, 1, S, S]
    mean, std = train.mean(), train.std()
    out = {}
    for name, idx in (("train", train_idx), ("test", test_idx)):
        images = (_upsample(raw[idx], cfg.image_size) - mean) / std  # [N_split, 1, S, S]
        out[name] = Batch(images.contiguous(), labels[idx], idx)
    return out


def load_split(cfg: DigitsConfig, split: Split) -> Batch:
    """The whole ``split`` (cached per config; treat the tensors as read-only).

    Shapes:
        images ``[N_split, 1, S, S]``, labels and indices ``[N_split]``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"digits.load_split: split must be 'train' or 'test', got {split!r}")
    return _splits(cfg)[split]


def make_batch(cfg: DigitsConfig, batch_size: int, generator: torch.Generator) -> Batch:
    """``batch_size`` train-split images drawn uniformly with replacement; identical for
    identical generator states.

    Shapes:
        images ``[B, 1, S, S]``, labels ``[B]``, indices ``[B]``.
    """
    check_int("digits.make_batch", "batch_size", batch_size, 1)
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"digits.make_batch: generator must be a torch.Generator, got {generator!r}"
        )
    train = load_split(cfg, "train")
    pick = torch.randint(len(train.labels), (batch_size,), generator=generator)  # [B]
    return Batch(train.images[pick], train.labels[pick], train.indices[pick])


# ---- the quality bench's adapter -----------------------------------------------------------------
def _digits(mixer: str, d_model: int, num_layers: int, settings: dict) -> TaskParts:
    cfg = parse_config("digits", DigitsConfig, settings)
    check_image_size("digits", cfg.image_size)
    test = load_split(cfg, "test")

    def batch_fn(batch_size: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        b = make_batch(cfg, batch_size, g)
        return b.images, b.labels

    return TaskParts(lambda: image_model(mixer, d_model, num_layers, NUM_CLASSES, 1),
                     batch_fn, loss, metric, dataclasses.asdict(cfg), None,
                     held_out=[(test.images, test.labels)])  # fmt: skip


register_task(QualityTask("digits", "scikit-learn 8x8 digits upsampled to 32x32, metaformer_tiny "
                          "(top-1 accuracy on the fixed test split)", False, _digits,
                          patterns=("noncausal-self",), tokens=image_tokens))  # fmt: skip
