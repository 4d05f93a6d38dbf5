"""MQAR generator: determinism, layout, and the statistics of Zoology's generator."""

from __future__ import annotations

import itertools

import pytest
import torch

from attnzoo.tasks import mqar
from attnzoo.tasks.mqar import IGNORE_INDEX, MQARConfig


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs.double() * counts.sum()
    return float(((counts.double() - expected) ** 2 / expected).sum())


def _chi2_bound(df: int) -> float:
    # mean df, sd sqrt(2 df): 6 sd is far beyond chance for fixed seeds, tight for real errors
    return df + 6 * (2 * df) ** 0.5


def test_same_seed_same_batch_different_seed_differs() -> None:
    cfg = MQARConfig(vocab_size=512, seq_len=64, num_kv_pairs=4)
    a, b = mqar.make_batch(cfg, 8, _gen(1)), mqar.make_batch(cfg, 8, _gen(1))
    c = mqar.make_batch(cfg, 8, _gen(2))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


def test_shapes_and_dtypes() -> None:
    cfg = MQARConfig(vocab_size=300, seq_len=128, num_kv_pairs=8)
    batch = mqar.make_batch(cfg, 5, _gen(0))
    assert batch.inputs.shape == batch.targets.shape == (5, 128)
    assert batch.inputs.dtype == batch.targets.dtype == torch.int64
    assert batch.mask.dtype == torch.bool
    assert batch.mask.sum(dim=1).tolist() == [8] * 5


@pytest.mark.parametrize("noise", [False, True])
def test_layout_keys_values_queries_and_labels(noise: bool) -> None:
    cfg = MQARConfig(vocab_size=100, seq_len=64, num_kv_pairs=6, random_non_queries=noise)
    batch = mqar.make_batch(cfg, 200, _gen(3))
    n, ctx, half = 6, 12, 50
    for x, y in zip(batch.inputs.tolist(), batch.targets.tolist(), strict=True):
        keys, values = x[0:ctx:2], x[1:ctx:2]
        assert all(1 <= k < half for k in keys) and len(set(keys)) == n
        assert all(half <= v < 100 for v in values) and len(set(values)) == n
        pairs = dict(zip(keys, values, strict=True))
        # no labels in the prefix; a label exactly where a query key sits
        assert y[:ctx] == [IGNORE_INDEX] * ctx
        scored = [t for t in range(64) if y[t] != IGNORE_INDEX]
        assert len(scored) == n
        assert all((t - ctx) % 2 == 0 for t in scored)
        assert sorted(x[t] for t in scored) == sorted(keys)  # each key queried exactly once
        assert all(y[t] == pairs[x[t]] for t in scored)
        rest = [x[t] for t in range(ctx, 64) if t not in scored]
        if noise:
            assert all(0 <= tok < 100 for tok in rest)
        else:
            assert rest == [0] * len(rest)
    if noise:
        # noise is uniform over [0, V): almost no zeros left, and half of it above V/2
        rest = batch.inputs[:, ctx:][~batch.mask[:, ctx:]]
        assert (rest == 0).float().mean() < 0.03
        assert 0.45 < (rest >= half).float().mean() < 0.55


def test_zoology_docstring_example_shape() -> None:
    # Zoology's docstring example: V=12, n=2, L=16, no noise
    cfg = MQARConfig(vocab_size=18, seq_len=16, num_kv_pairs=2, random_non_queries=False)
    x = mqar.make_batch(cfg, 1, _gen(0)).inputs[0]
    assert (x[:4:2] < 9).all() and (x[1:4:2] >= 9).all() and int((x[4:] != 0).sum()) == 2


def test_keys_and_values_are_uniform() -> None:
    cfg = MQARConfig(vocab_size=40, seq_len=16, num_kv_pairs=4)
    batch = mqar.make_batch(cfg, 5000, _gen(4))
    keys, values = batch.inputs[:, 0:8:2].flatten(), batch.inputs[:, 1:8:2].flatten()
    key_counts = torch.bincount(keys, minlength=40)
    value_counts = torch.bincount(values, minlength=40)
    assert key_counts[0] == 0 and key_counts[20:].sum() == 0
    assert value_counts[:20].sum() == 0
    assert _chi2(key_counts[1:20], torch.full((19,), 1 / 19)) < _chi2_bound(18)
    assert _chi2(value_counts[20:], torch.full((20,), 1 / 20)) < _chi2_bound(19)


def _reference_power_law(space: int, a: float) -> torch.Tensor:
    g = torch.arange(1, space + 1, dtype=torch.float64)
    p = a * g ** (a - 1)
    return p / p.sum()


@pytest.mark.parametrize("power_a", [0.01, 0.5, 1.0])
def test_single_query_gap_follows_power_law(power_a: float) -> None:
    # one query: its slot g = (pos - 2n) / 2 is one draw from p(g) ∝ a (g+1)^(a-1)
    cfg = MQARConfig(vocab_size=100, seq_len=64, num_kv_pairs=1, power_a=power_a)
    batch = mqar.make_batch(cfg, 20000, _gen(5))
    pos = batch.mask.int().argmax(dim=1)
    gaps = (pos - 2) // 2
    counts = torch.bincount(gaps, minlength=31)
    assert counts.numel() == 31  # s = (64 - 2) // 2 slots, none beyond
    probs = _reference_power_law(31, power_a)
    torch.testing.assert_close(mqar.gap_probabilities(cfg), probs)
    assert _chi2(counts, probs) < _chi2_bound(30)
    if power_a == 0.01:
        # shape: close to 1/(g+1), so slot 0 is about twice as likely as slot 1
        ratio = float(counts[0] / counts[1])
        assert 1.8 < ratio < 2.2
        assert (counts[:5].sum() / counts.sum()) > 0.5


def test_multi_query_slots_are_sequential_sampling_without_replacement() -> None:
    # L = 12, n = 2: s = 4 slots. Zoology draws the slots with numpy's choice(replace=False, p)
    # (sequential weighted sampling) and gives the i-th prefix key the i-th drawn slot, so
    # P(key 1 in slot i, key 2 in slot j) = p_i p_j / (1 - p_i) for i != j.
    cfg = MQARConfig(vocab_size=16, seq_len=12, num_kv_pairs=2, random_non_queries=False)
    p = _reference_power_law(4, 0.01)
    cells = list(itertools.permutations(range(4), 2))
    probs = torch.stack([p[i] * p[j] / (1 - p[i]) for i, j in cells])
    batch = mqar.make_batch(cfg, 40000, _gen(6))
    x = batch.inputs
    slot_of = torch.stack(
        [(x[:, 4:] == x[:, k : k + 1]).to(torch.int64).argmax(dim=1) // 2 for k in (0, 2)], dim=1
    )  # [B, 2]: slot of the first and second prefix key
    assert batch.mask[:, 4:].sum(dim=1).eq(2).all() and (slot_of[:, 0] != slot_of[:, 1]).all()
    index = {c: i for i, c in enumerate(cells)}
    counts = torch.bincount(
        torch.tensor([index[(a, b)] for a, b in slot_of.tolist()]), minlength=len(cells)
    )
    assert _chi2(counts, probs) < _chi2_bound(len(cells) - 1)


def test_figure2_grid() -> None:
    assert mqar.ZOOLOGY_FIGURE2 == ((64, 4), (128, 8), (256, 16))
    cfgs = mqar.figure2_configs(vocab_size=1024)
    assert [(c.seq_len, c.num_kv_pairs) for c in cfgs] == list(mqar.ZOOLOGY_FIGURE2)
    assert all(c.vocab_size == 1024 and not c.random_non_queries for c in cfgs)
    assert all(c.vocab_size == 8192 for c in mqar.figure2_configs())
    for cfg in cfgs:
        assert mqar.make_batch(cfg, 2, _gen(0)).mask.sum().item() == 2 * cfg.num_kv_pairs


def test_metric_counts_only_scored_positions() -> None:
    cfg = MQARConfig(vocab_size=64, seq_len=32, num_kv_pairs=4)
    batch = mqar.make_batch(cfg, 10, _gen(7))
    mask = batch.mask
    # perfect on scored positions, garbage elsewhere
    preds = torch.where(mask, batch.targets, torch.full_like(batch.targets, 5))
    assert mqar.metric(preds, batch.targets) == 1.0
    logits = torch.nn.functional.one_hot(preds, 64).float()
    assert mqar.metric(logits, batch.targets) == 1.0
    # break the first scored position of every even row: 5 of 40 wrong
    wrong = preds.clone()
    for b in range(0, 10, 2):
        t = int(mask[b].int().argmax())
        wrong[b, t] = 0
    assert mqar.metric(wrong, batch.targets) == pytest.approx(35 / 40)
    assert mqar.metric(torch.zeros_like(preds), batch.targets) == 0.0
    assert mqar.loss(logits * 50, batch.targets).item() < 1e-6
    with pytest.raises(ValueError, match=r"logits \[B, L, V\]"):
        mqar.metric(logits[:, :5], batch.targets)
    with pytest.raises(ValueError, match="no scored positions"):
        mqar.metric(preds, torch.full_like(preds, IGNORE_INDEX))


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"seq_len": 63}, ValueError, "seq_len must be even.*63"),
        ({"vocab_size": 64}, ValueError, "vocab_size must be > seq_len=64.*got 64"),
        ({"num_kv_pairs": 17}, ValueError, "num_kv_pairs must be <= seq_len / 4 = 16.*got 17"),
        ({"num_kv_pairs": 0}, ValueError, "num_kv_pairs must be >= 1, got 0"),
        ({"power_a": 0.0}, ValueError, "power_a must be a finite float > 0, got 0.0"),
        ({"power_a": float("nan")}, ValueError, "power_a must be a finite float > 0"),
        ({"seq_len": True}, TypeError, "seq_len must be an int, got True"),
        ({"random_non_queries": 1}, TypeError, "random_non_queries must be a bool, got 1"),
    ],
)
def test_config_errors(kwargs: dict, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        MQARConfig(**kwargs)


def test_make_batch_errors() -> None:
    cfg = MQARConfig()
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        mqar.make_batch(cfg, 0, _gen(0))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        mqar.make_batch(cfg, 2, 0)  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        MQARConfig().seq_len = 128  # type: ignore[misc]
