"""The 8x8 digits task: split (stratified, disjoint, seeded), upsampling rule, normalisation,
sampling, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from attnzoo.tasks import digits as D
from attnzoo.tasks.digits import DigitsConfig

CFG = DigitsConfig()
RAW = load_digits()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bilinear_matrix(size: int) -> np.ndarray:
    """[size, 8] weights of 1-D linear interpolation at target centres (o + 0.5) * 8 / size - 0.5,
    clamped to the source range: the documented rule, restated independently of torch."""
    a = np.zeros((size, 8))
    for o in range(size):
        src = min(max((o + 0.5) * 8 / size - 0.5, 0.0), 7.0)
        i0 = int(np.floor(src))
        i1, w = min(i0 + 1, 7), src - np.floor(src)
        a[o, i0] += 1 - w
        a[o, i1] += w
    return a


def test_split_is_stratified_disjoint_complete_and_seeded() -> None:
    train, test = D.split_indices(CFG)
    assert len(set(train.tolist()) & set(test.tolist())) == 0
    assert sorted(train.tolist() + test.tolist()) == list(range(len(RAW.target)))
    counts = np.bincount(RAW.target, minlength=10)
    test_counts = np.bincount(RAW.target[test.numpy()], minlength=10)
    assert (test_counts == np.round(0.2 * counts)).all(), test_counts  # per class, exactly
    assert (np.bincount(RAW.target[train.numpy()], minlength=10) == counts - test_counts).all()
    again = D.split_indices(DigitsConfig())
    other = D.split_indices(DigitsConfig(split_seed=1))
    assert torch.equal(again[1], test) and not torch.equal(other[1], test)
    assert len(D.split_indices(DigitsConfig(test_fraction=0.5))[1]) == sum(np.round(0.5 * counts))


@pytest.mark.parametrize("size", [8, 16, 32])
def test_images_follow_the_documented_upsampling_and_standardisation(size: int) -> None:
    cfg = DigitsConfig(image_size=size)
    train, test = D.load_split(cfg, "train"), D.load_split(cfg, "test")
    assert train.images.shape == (len(train.labels), 1, size, size)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    a = bilinear_matrix(size)
    up = np.einsum("oi,nij,pj->nop", a, RAW.images / 16.0, a)  # [N, S, S]
    train_up = up[train.indices.numpy()]
    mean, std = train_up.mean(), train_up.std(ddof=1)
    for split in (train, test):
        want = (up[split.indices.numpy()] - mean) / std
        np.testing.assert_allclose(split.images[:, 0].numpy(), want, atol=2e-5)
        assert (split.labels.numpy() == RAW.target[split.indices.numpy()]).all()
    assert abs(float(train.images.mean())) < 1e-5 and abs(float(train.images.std()) - 1) < 1e-5


def test_make_batch_samples_the_train_split_deterministically() -> None:
    a, b, c = (D.make_batch(CFG, 256, gen(s)) for s in (1, 1, 2))
    assert torch.equal(a.images, b.images) and torch.equal(a.indices, b.indices)
    assert not torch.equal(a.indices, c.indices)
    assert a.images.shape == (256, 1, 32, 32) and a.targets is a.labels
    train_idx, test_idx = D.split_indices(CFG)
    assert set(a.indices.tolist()) <= set(train_idx.tolist())
    assert not set(a.indices.tolist()) & set(test_idx.tolist())
    big = D.make_batch(CFG, 20000, gen(3)).labels
    share = torch.bincount(big, minlength=10).double() / len(big)
    assert (share - 0.1).abs().max() < 0.02  # the train split is balanced (~0.1 per class)


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="image_size must be >= 8, got 4"):
        DigitsConfig(image_size=4)
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\), got 1.0"):
        DigitsConfig(test_fraction=1.0)
    with pytest.raises(TypeError, match="split_seed must be an int, got 'a'"):
        DigitsConfig(split_seed="a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        D.make_batch(CFG, 0, gen(0))
    with pytest.raises(TypeError, match="generator must be a torch.Generator, got 3"):
        D.make_batch(CFG, 2, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        D.load_split(CFG, "val")  # type: ignore[arg-type]
