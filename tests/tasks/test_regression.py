"""In-context regression: token layout, the maps' laws per mode, targets, metric, baseline."""

from __future__ import annotations

import math

import pytest
import torch

from attnzoo.tasks import regression as R
from attnzoo.tasks.regression import RegressionConfig

MODES = ["linear", "switching", "drift", "locally_linear"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- determinism, shapes, layout


@pytest.mark.parametrize("mode", MODES)
def test_determinism(mode: str) -> None:
    cfg = RegressionConfig(mode=mode, noise_std=0.1)  # type: ignore[arg-type]
    a, b, c = (R.make_batch(cfg, 8, gen(s)) for s in (1, 1, 2))
    for name in ("inputs", "targets", "xs", "ys", "weights", "pieces"):
        torch.testing.assert_close(
            getattr(a, name), getattr(b, name), rtol=0, atol=0, equal_nan=True
        )
    assert not torch.equal(a.inputs, c.inputs)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["pair", "interleaved"])
def test_shapes_and_token_layout(mode: str, layout: str) -> None:
    cfg = RegressionConfig(d_x=3, d_y=2, num_pairs=10, mode=mode, layout=layout, min_context=2)  # type: ignore[arg-type]
    batch = R.make_batch(cfg, 5, gen(0))
    assert batch.inputs.shape == (5, 20, 6) and batch.inputs.dtype == torch.float32
    assert batch.targets.shape == (5, 20, 2) and batch.targets.dtype == torch.float32
    assert batch.xs.shape == (5, 10, 3) and batch.ys.shape == (5, 10, 2)
    assert batch.weights.shape == (5, 10, 2, 3) and batch.pieces.shape == (5, 10)
    x, y, flag = batch.inputs[..., :3], batch.inputs[..., 3:5], batch.inputs[..., 5]
    assert torch.equal(x[:, 0::2], batch.xs) and (y[:, 0::2] == 0).all()
    assert (flag[:, 0::2] == 1).all() and (flag[:, 1::2] == 0).all()
    assert torch.equal(y[:, 1::2], batch.ys)
    if layout == "pair":
        assert torch.equal(x[:, 1::2], batch.xs)
    else:
        assert (x[:, 1::2] == 0).all()


def test_targets_only_at_scored_queries() -> None:
    cfg = RegressionConfig(num_pairs=8, min_context=3, d_y=2)
    batch = R.make_batch(cfg, 4, gen(1))
    want_mask = torch.zeros(16, dtype=torch.bool)
    want_mask[6::2] = True  # query positions 2t for t >= 3
    assert torch.equal(batch.mask, want_mask.expand(4, 16))
    assert torch.equal(batch.targets[:, 6::2], batch.ys[:, 3:])
    assert batch.targets[:, ~want_mask].isnan().all()


# ---------------------------------------------------------------- generator statistics


@pytest.mark.parametrize("mode", MODES)
def test_y_is_the_map_applied_to_x(mode: str) -> None:
    clean = R.make_batch(RegressionConfig(mode=mode, d_y=3), 64, gen(2))  # type: ignore[arg-type]
    want = torch.einsum("btyx,btx->bty", clean.weights, clean.xs)
    torch.testing.assert_close(clean.ys, want)
    noisy = R.make_batch(RegressionConfig(mode=mode, noise_std=0.3), 512, gen(3))  # type: ignore[arg-type]
    resid = noisy.ys - torch.einsum("btyx,btx->bty", noisy.weights, noisy.xs)
    assert abs(resid.std().item() - 0.3) < 0.01 and abs(resid.mean().item()) < 0.01


@pytest.mark.parametrize("mode", MODES)
def test_marginal_laws(mode: str) -> None:
    """x ~ N(0, I); W entries ~ N(0, 1/d_x) at every t; so E[y^2] = 1 per component."""
    cfg = RegressionConfig(mode=mode, d_x=4, d_y=2, num_pairs=16)  # type: ignore[arg-type]
    batch = R.make_batch(cfg, 2000, gen(4))
    assert abs(batch.xs.mean().item()) < 0.01 and abs(batch.xs.var().item() - 1) < 0.02
    for t in (0, 15):
        w = batch.weights[:, t]  # one W per sequence at this t: independent across sequences
        assert abs(w.var().item() - 1 / 4) < 0.02, t
    assert abs(batch.ys.pow(2).mean().item() - 1) < 0.05


def test_linear_mode_has_one_map_per_sequence() -> None:
    batch = R.make_batch(RegressionConfig(mode="linear"), 16, gen(5))
    assert (batch.weights == batch.weights[:, :1]).all()
    assert not torch.equal(batch.weights[0, 0], batch.weights[1, 0])
    assert (batch.pieces == 0).all() and batch.anchors is None


def test_switching_change_points() -> None:
    cfg = RegressionConfig(mode="switching", num_pairs=9, num_pieces=3)
    batch = R.make_batch(cfg, 4000, gen(6))
    steps = batch.pieces.diff(dim=1)  # [B, T-1]
    assert ((steps == 0) | (steps == 1)).all() and (batch.pieces[:, 0] == 0).all()
    assert (batch.pieces[:, -1] == 2).all()  # exactly num_pieces segments
    same = (batch.weights[:, 1:] == batch.weights[:, :-1]).flatten(2).all(-1)  # [B, T-1]
    assert torch.equal(same, steps == 0)  # the map changes exactly at the change points
    # change points uniform over {1..T-1}: each is a cut w.p. (P-1)/(T-1) = 2/8
    freq = steps.double().mean(0)
    assert ((freq - 0.25).abs() < 5 * (0.25 * 0.75 / 4000) ** 0.5).all(), freq
    # consecutive segments use independent maps
    first, last = batch.weights[:, 0].flatten(), batch.weights[:, -1].flatten()
    assert abs(torch.corrcoef(torch.stack([first, last]))[0, 1].item()) < 0.05


def test_drift_autocorrelation() -> None:
    delta = 0.3
    cfg = RegressionConfig(mode="drift", drift=delta, num_pairs=12, d_x=2, d_y=2)
    w = R.make_batch(cfg, 3000, gen(7)).weights.flatten(2)  # [B, T, d_y*d_x]
    for lag in (1, 4):
        a, b = w[:, 0].flatten(), w[:, lag].flatten()
        corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
        assert abs(corr - (1 - delta**2) ** (lag / 2)) < 0.03, (lag, corr)
    frozen = R.make_batch(RegressionConfig(mode="drift", drift=0.0), 4, gen(8)).weights
    assert torch.allclose(frozen, frozen[:, :1].expand_as(frozen))


def test_locally_linear_uses_the_nearest_anchor_map() -> None:
    cfg = RegressionConfig(mode="locally_linear", num_pieces=3, num_pairs=32, d_x=2)
    batch = R.make_batch(cfg, 300, gen(9))
    assert batch.anchors is not None and batch.anchors.shape == (300, 3, 2)
    for b in range(20):
        for t in range(32):
            dist = [float((batch.xs[b, t] - a).norm()) for a in batch.anchors[b]]
            k = min(range(3), key=dist.__getitem__)
            assert int(batch.pieces[b, t]) == k
    # pairs in the same region share one map; different regions differ
    for b in range(20):
        for k in batch.pieces[b].unique().tolist():
            w = batch.weights[b][batch.pieces[b] == k]
            assert (w == w[:1]).all()
    assert batch.pieces.unique().tolist() == [0, 1, 2]


# ---------------------------------------------------------------- metric, loss, baseline


def test_metric_and_loss() -> None:
    batch = R.make_batch(RegressionConfig(d_y=2, noise_std=0.1), 32, gen(10))
    exact = torch.nan_to_num(batch.targets, nan=123.0)  # unscored values are ignored
    assert R.metric(exact, batch.targets) == 0.0
    zero = torch.zeros_like(batch.targets)
    want = batch.targets[batch.mask].pow(2).mean().item()
    assert R.metric(zero, batch.targets) == pytest.approx(want)
    assert 0.8 < want < 1.3  # about 1 + noise^2 by construction
    out = zero.clone().requires_grad_(True)
    R.loss(out, batch.targets).backward()
    assert out.grad is not None and torch.isfinite(out.grad).all()
    assert (out.grad[~batch.mask] == 0).all() and (out.grad[batch.mask] != 0).any()
    with pytest.raises(ValueError, match="output must match targets"):
        R.metric(zero[..., :1], batch.targets)
    with pytest.raises(ValueError, match="no scored positions"):
        R.metric(zero, torch.full_like(zero, math.nan))


def test_ridge_baseline_solves_stationary_but_not_switching() -> None:
    """The targets are consistent with the pairs: ridge on the context recovers y exactly once
    there are d_x pairs (noiseless, stationary); a change of map breaks the global fit while a
    short window recovers."""
    cfg = RegressionConfig(d_x=3, num_pairs=24, min_context=4)
    batch = R.make_batch(cfg, 64, gen(11))
    assert R.metric(R.ridge_predictions(batch), batch.targets) < 1e-6
    sw = RegressionConfig(d_x=2, num_pairs=40, mode="switching", num_pieces=2, min_context=4)
    batch = R.make_batch(sw, 256, gen(12))
    full = R.metric(R.ridge_predictions(batch), batch.targets)
    local = R.metric(R.ridge_predictions(batch, window=3), batch.targets)
    assert full > 0.1 and local < full / 2, (full, local)


# ---------------------------------------------------------------- config errors


def test_config_errors() -> None:
    with pytest.raises(ValueError, match=r"mode must be one of .*got 'sine'"):
        RegressionConfig(mode="sine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"layout must be one of .*got 'stacked'"):
        RegressionConfig(layout="stacked")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_pieces must be <= num_pairs=4 .* got 5"):
        RegressionConfig(mode="switching", num_pairs=4, num_pieces=5)
    with pytest.raises(ValueError, match=r"drift must be a finite float in \[0.0, 1.0\], got 1.5"):
        RegressionConfig(drift=1.5)
    with pytest.raises(ValueError, match="noise_std must be a finite float .* got -0.1"):
        RegressionConfig(noise_std=-0.1)
    with pytest.raises(ValueError, match="min_context must be < num_pairs=8, got 8"):
        RegressionConfig(num_pairs=8, min_context=8)
    with pytest.raises(TypeError, match="d_x must be an int, got True"):
        RegressionConfig(d_x=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_pairs must be >= 2, got 1"):
        RegressionConfig(num_pairs=1)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        R.make_batch(RegressionConfig(), 0, gen(0))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        R.make_batch(RegressionConfig(), 2, None)  # type: ignore[arg-type]
