"""Pointer tasks: sorting and convex-hull generators against independent oracles; the head."""

from __future__ import annotations

import pytest
import torch

from attnzoo.tasks import pointer as P
from attnzoo.tasks.pointer import IGNORE_INDEX, Batch, PointerConfig, PointerHead

SORT = PointerConfig(task="sort", train_n=(5, 10), test_n=(11, 20))
HULL = PointerConfig(task="hull", train_n=(5, 10), test_n=(11, 20))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def brute_hull(points: list[tuple[float, float]]) -> list[int]:
    """O(n^3) oracle: i -> j is a hull edge when every other point is strictly left of it or
    strictly inside the segment. torch.rand's float32 values are multiples of 2^-24, so the
    coordinates are scaled to exact integers first."""
    pts = []
    for x, y in points:
        xi, yi = x * 2**24, y * 2**24
        assert xi == int(xi) and yi == int(yi)
        pts.append((int(xi), int(yi)))
    uniq = [i for i, p in enumerate(pts) if p not in pts[:i]]
    if len(uniq) == 1:
        return uniq
    succ: dict[int, int] = {}
    for i in uniq:
        for j in uniq:
            if i == j:
                continue
            (ax, ay), (bx, by) = pts[i], pts[j]
            ok = True
            for k in uniq:
                if k in (i, j):
                    continue
                cx, cy = pts[k]
                cross = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
                dot = (cx - ax) * (bx - ax) + (cy - ay) * (by - ay)
                inside = cross == 0 and 0 < dot < (bx - ax) ** 2 + (by - ay) ** 2
                if not (cross > 0 or inside):
                    ok = False
                    break
            if ok:
                assert i not in succ, "two successors: the oracle is broken"
                succ[i] = j
    start = min(succ)
    out, cur = [start], succ[start]
    while cur != start:
        out.append(cur)
        cur = succ[cur]
    return out


# ---------------------------------------------------------------- determinism, shapes, dtypes


@pytest.mark.parametrize("cfg", [SORT, HULL], ids=["sort", "hull"])
def test_determinism(cfg: PointerConfig) -> None:
    a, b, c = (P.make_batch(cfg, 16, gen(s)) for s in (1, 1, 2))
    for name in ("inputs", "lengths", "input_mask", "targets", "exclude"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.inputs, c.inputs)


@pytest.mark.parametrize("cfg", [SORT, HULL], ids=["sort", "hull"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_shapes_and_dtypes(cfg: PointerConfig, split: str) -> None:
    batch = P.make_batch(cfg, 8, gen(0), split=split)
    n_max = cfg.n_range(split)[1]  # type: ignore[arg-type]
    steps = n_max if cfg.task == "sort" else n_max + 1
    assert batch.inputs.shape == (8, n_max, cfg.feature_dim)
    assert batch.inputs.dtype == torch.float32
    assert batch.lengths.shape == (8,) and batch.lengths.dtype == torch.int64
    assert batch.input_mask.shape == (8, n_max) and batch.input_mask.dtype == torch.bool
    assert batch.targets.shape == (8, steps) and batch.targets.dtype == torch.int64
    assert batch.exclude.shape == (8, steps, n_max) and batch.exclude.dtype == torch.bool
    assert batch.end_index == (None if cfg.task == "sort" else n_max)


# ---------------------------------------------------------------- generator statistics


@pytest.mark.parametrize("split", ["train", "test"])
def test_lengths_uniform_over_range(split: str) -> None:
    lo, hi = SORT.n_range(split)  # type: ignore[arg-type]
    batch = P.make_batch(SORT, 6000, gen(3), split=split)
    counts = torch.bincount(batch.lengths, minlength=hi + 1)[lo:].double()
    k = hi - lo + 1
    assert int(counts.sum()) == 6000 and batch.lengths.min() >= lo and batch.lengths.max() <= hi
    expected, sd = 6000 / k, (6000 * (1 / k) * (1 - 1 / k)) ** 0.5
    assert ((counts - expected).abs() < 5 * sd).all(), counts
    assert torch.equal(batch.input_mask.sum(1), batch.lengths)
    assert torch.equal(batch.input_mask, torch.arange(hi) < batch.lengths[:, None])


@pytest.mark.parametrize("cfg", [SORT, HULL], ids=["sort", "hull"])
def test_inputs_uniform_unit_interval_and_zero_padding(cfg: PointerConfig) -> None:
    batch = P.make_batch(cfg, 3000, gen(4))
    real = batch.inputs[batch.input_mask]  # [count, F]
    assert real.min() >= 0 and real.max() < 1
    count = real.numel()
    assert abs(real.mean().item() - 0.5) < 5 * (1 / 12 / count) ** 0.5
    assert abs(real.var().item() - 1 / 12) < 0.005
    assert (batch.inputs[~batch.input_mask] == 0).all()
    if cfg.feature_dim == 2:  # x and y independent
        assert abs(torch.corrcoef(real.T)[0, 1].item()) < 5 / count**0.5


@pytest.mark.parametrize("split", ["train", "test"])
def test_sort_targets_are_the_argsort(split: str) -> None:
    batch = P.make_batch(SORT, 200, gen(5), split=split)
    for b in range(200):
        n = int(batch.lengths[b])
        values = batch.inputs[b, :n, 0].tolist()
        want = sorted(range(n), key=lambda i, v=values: (v[i], i))
        assert batch.targets[b, :n].tolist() == want
        assert (batch.targets[b, n:] == IGNORE_INDEX).all()


def test_sort_ties_break_by_lower_index() -> None:
    values = torch.tensor([[0.5, 0.25, 0.5, 0.25, 0.0]])
    got = P.sort_targets(values, torch.tensor([4]))
    assert got.tolist() == [[1, 3, 0, 2, IGNORE_INDEX]]


@pytest.mark.parametrize("split", ["train", "test"])
def test_hull_targets_match_brute_force(split: str) -> None:
    count = 120 if split == "train" else 30
    batch = P.make_batch(HULL, count, gen(6), split=split)
    end = batch.end_index
    for b in range(count):
        n = int(batch.lengths[b])
        want = brute_hull([tuple(p) for p in batch.inputs[b, :n].tolist()])
        h = len(want)
        assert batch.targets[b, :h].tolist() == want
        assert int(batch.targets[b, h]) == end
        assert (batch.targets[b, h + 1 :] == IGNORE_INDEX).all()


def test_hull_degenerate_cases() -> None:
    # unit square (scaled), its centre, a point inside the bottom edge, a repeated corner
    q = 0.25
    pts = [(q, q), (3 * q, 3 * q), (2 * q, 2 * q), (3 * q, q), (q, 3 * q), (2 * q, q), (3 * q, q)]
    want = brute_hull(pts)
    assert want == [0, 3, 1, 4]  # CCW from the lowest index; 5 is on an edge, 6 repeats 3
    assert P.convex_hull(torch.tensor(pts)) == want
    collinear = [(2 * q, 2 * q), (q, q), (3 * q, 3 * q)]
    assert P.convex_hull(torch.tensor(collinear)) == brute_hull(collinear) == [1, 2]
    assert P.convex_hull(torch.tensor([(q, q), (q, q)])) == [0]


def test_hull_size_distribution_n4_matches_sylvester() -> None:
    """4 uniform points in a square: one lies in the others' triangle w.p. 4 * 11/144 = 11/36
    (the mean triangle area in the unit square is 11/144), so E[h] = 4 - 11/36."""
    cfg = PointerConfig(task="hull", train_n=(4, 4), test_n=(4, 4))
    batch = P.make_batch(cfg, 6000, gen(7))
    sizes = (batch.targets == batch.end_index).nonzero()[:, 1].double()  # END's step = h
    p = 11 / 36
    assert abs(sizes.mean().item() - (4 - p)) < 5 * (p * (1 - p) / 6000) ** 0.5
    assert set(sizes.long().tolist()) == {3, 4}
    tri = P.make_batch(PointerConfig(task="hull", train_n=(3, 3)), 500, gen(8))
    assert (tri.targets[:, 3] == 3).all()  # three points: always a triangle


def test_exclusion_mask_is_teacher_forcing() -> None:
    for cfg in (SORT, HULL):
        batch = P.make_batch(cfg, 64, gen(9))
        n_max = batch.inputs.shape[1]
        for b in range(64):
            seen: set[int] = set()
            for i, t in enumerate(batch.targets[b].tolist()):
                row = batch.exclude[b, i]
                pad = ~batch.input_mask[b]
                if t == IGNORE_INDEX:
                    assert torch.equal(row, pad)
                    continue
                want = pad.clone()
                want[list(seen)] = True
                assert torch.equal(row, want)
                assert t == batch.end_index or not row[t]  # the target itself stays allowed
                if t < n_max:
                    seen.add(t)
        if cfg.task == "sort":
            assert not batch.exclude.all(dim=-1).any()


# ---------------------------------------------------------------- metric and loss


def test_metric_and_token_accuracy() -> None:
    batch = P.make_batch(SORT, 10, gen(10))
    logits = torch.nn.functional.one_hot(batch.targets.clamp(min=0), 10).float()
    assert P.metric(logits, batch.targets) == 1.0
    assert P.token_accuracy(logits, batch.targets) == 1.0
    preds = batch.targets.clone()
    preds[batch.targets == IGNORE_INDEX] = 0  # unscored steps do not count
    preds[3, 0] = (preds[3, 0] + 1) % 5
    scored = int((batch.targets != IGNORE_INDEX).sum())
    assert P.metric(preds, batch.targets) == pytest.approx(0.9)
    assert P.token_accuracy(preds, batch.targets) == pytest.approx(1 - 1 / scored)
    with pytest.raises(ValueError, match="logits"):
        P.metric(preds[:, :3], batch.targets)


# ---------------------------------------------------------------- the pointer head


def test_head_matches_additive_formula() -> None:
    head = PointerHead(8, d_hidden=5)
    enc, dec = torch.randn(2, 6, 8), torch.randn(2, 3, 8)
    u = head(enc, dec)
    w1, w2, v = head.w_enc.weight, head.w_dec.weight, head.v.weight[0]
    for b in range(2):
        for i in range(3):
            for j in range(6):
                want = v @ torch.tanh(w1 @ enc[b, j] + w2 @ dec[b, i])
                torch.testing.assert_close(u[b, i, j], want)


def test_head_masks_chosen_positions() -> None:
    head = PointerHead(8)
    enc, dec = torch.randn(2, 5, 8), torch.randn(2, 4, 8)
    mask = torch.rand(2, 4, 5) < 0.4
    u = head(enc, dec, mask)
    assert u.shape == (2, 4, 5)
    assert torch.isneginf(u[mask]).all() and torch.isfinite(u[~mask]).all()
    mask2 = torch.tensor([[True, False, False, True, False]] * 2)
    assert torch.equal(head(enc, dec, mask2), head(enc, dec, mask2[:, None].expand(2, 4, 5)))
    ended = PointerHead(8, end_slot=True)
    u = ended(enc, dec, torch.ones(2, 4, 5, dtype=torch.bool))  # everything chosen
    assert u.shape == (2, 4, 6)
    assert torch.isneginf(u[..., :5]).all() and torch.isfinite(u[..., 5]).all()


@pytest.mark.parametrize("cfg", [SORT, HULL], ids=["sort", "hull"])
def test_gradients_flow_through_teacher_forced_loss(cfg: PointerConfig) -> None:
    batch: Batch = P.make_batch(cfg, 6, gen(11))
    d = 16
    head = PointerHead(d, end_slot=cfg.task == "hull")
    embed = torch.nn.Linear(cfg.feature_dim, d)
    enc = embed(batch.inputs)  # [B, N, D]
    dec = torch.randn(6, batch.targets.shape[1], d, requires_grad=True)  # [B, M, D]
    logits = head(enc, dec, batch.exclude)
    loss = P.loss(logits, batch.targets)
    loss.backward()
    assert torch.isfinite(loss)
    params = list(head.parameters()) + list(embed.parameters())
    for p in params + [dec]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_head_errors() -> None:
    head = PointerHead(8)
    enc, dec = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"enc must be \[B, n, 8\]"):
        head(torch.randn(2, 5, 7), dec)
    with pytest.raises(ValueError, match="dec must be"):
        head(enc, torch.randn(3, 3, 8))
    with pytest.raises(ValueError, match="chosen_mask must be bool"):
        head(enc, dec, torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="chosen_mask must be bool"):
        head(enc, dec, torch.zeros(2, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="d_model must be >= 1, got 0"):
        PointerHead(0)


# ---------------------------------------------------------------- config errors


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="task must be 'sort' or 'hull', got 'tsp'"):
        PointerConfig(task="tsp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"train_n\[1\] must be >= 5, got 4"):
        PointerConfig(train_n=(5, 4))
    with pytest.raises(ValueError, match=r"test_n\[0\] must be >= 3, got 2"):
        PointerConfig(task="hull", test_n=(2, 9))
    with pytest.raises(TypeError, match=r"train_n\[0\] must be an int, got 2.0"):
        PointerConfig(train_n=(2.0, 5))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"test_n must be a \(min, max\) pair, got \(3,\)"):
        PointerConfig(test_n=(3,))  # type: ignore[arg-type]
    assert PointerConfig(train_n=[2, 3]).train_n == (2, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        P.make_batch(SORT, 2, gen(0), split="val")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        P.make_batch(SORT, 0, gen(0))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        P.make_batch(SORT, 2, 0)  # type: ignore[arg-type]
