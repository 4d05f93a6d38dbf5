"""The quality trainer: it learns, it is deterministic, early stop, Ctrl-C, the lr sweep; and the
1-D SequenceModel it trains (shapes, pooling, errors)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnzoo.bench.train import TrainConfig, sweep, train
from attnzoo.models import SequenceModel

V, T = 16, 12


def copy_prev_batch(batch_size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets are the previous token (the first position is ignored): needs token mixing."""
    x = torch.randint(0, V, (batch_size, T), generator=g)
    y = torch.cat([torch.full((batch_size, 1), -100), x[:, :-1]], dim=1)
    return x, y


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=-100)


def acc_fn(out: torch.Tensor, y: torch.Tensor) -> float:
    keep = y != -100
    return float((out.argmax(-1)[keep] == y[keep]).float().mean())


def model_fn() -> SequenceModel:
    return SequenceModel(vocab_size=V, d_model=32, num_layers=1, mixer="softmax", max_len=T)


def test_it_learns_and_curves_are_recorded() -> None:
    cfg = TrainConfig(steps=60, batch_size=32, lr=1e-2, warmup_steps=5, eval_every=20)
    r = train(model_fn, copy_prev_batch, loss_fn, acc_fn, cfg)
    assert (
        r.status == "complete"
        and r.steps_run == 60
        and [row["step"] for row in r.curve] == [20, 40, 60]
    )
    assert r.curve[-1]["eval_loss"] < r.curve[0]["eval_loss"] < 2.9  # ln(16) = 2.77 at chance
    assert r.final_metric is not None and r.final_metric > 0.9  # chance is 1/16


def test_same_seed_same_curve_other_seed_differs() -> None:
    cfg = TrainConfig(steps=10, batch_size=8, eval_every=5, seed=3)
    a = train(model_fn, copy_prev_batch, loss_fn, acc_fn, cfg)
    b = train(model_fn, copy_prev_batch, loss_fn, acc_fn, cfg)
    c = train(
        model_fn,
        copy_prev_batch,
        loss_fn,
        acc_fn,
        TrainConfig(steps=10, batch_size=8, eval_every=5, seed=4),
    )
    strip = lambda r: [{k: v for k, v in row.items() if k != "seconds"} for row in r.curve]  # noqa: E731
    assert strip(a) == strip(b) and strip(a) != strip(c)


def test_early_stop_at_target() -> None:
    cfg = TrainConfig(steps=100, batch_size=8, eval_every=2, target=0.0)
    r = train(model_fn, copy_prev_batch, loss_fn, acc_fn, cfg)
    assert r.status == "early-stop" and r.steps_run == 2 and len(r.curve) == 1


def test_minimised_metric_early_stop_best_and_sweep() -> None:
    """An error metric (lower is better): reaching the target means going below it, and "best"
    is the smallest value."""
    err = lambda out, y: 1.0 - acc_fn(out, y)  # noqa: E731
    cfg = TrainConfig(steps=100, batch_size=8, eval_every=2, target=1.0, maximize=False)
    r = train(model_fn, copy_prev_batch, loss_fn, err, cfg)
    assert r.status == "early-stop" and r.steps_run == 2
    cfg = TrainConfig(steps=30, batch_size=16, eval_every=15, warmup_steps=2, maximize=False)
    best, runs = sweep([1e-6, 1e-2], model_fn, copy_prev_batch, loss_fn, err, cfg)
    assert best is runs[1] and best.best_metric == min(row["metric"] for row in best.curve)


def test_ctrl_c_keeps_the_partial_curve() -> None:
    calls = []

    def interrupting(batch_size: int, g: torch.Generator):  # noqa: ANN202
        calls.append(1)
        if len(calls) > 2 + 5:  # 2 held-out batches, then 5 training batches
            raise KeyboardInterrupt
        return copy_prev_batch(batch_size, g)

    cfg = TrainConfig(steps=50, batch_size=4, eval_every=2, eval_batches=2)
    r = train(model_fn, interrupting, loss_fn, acc_fn, cfg)
    assert (
        r.status == "interrupted"
        and r.steps_run == 5
        and [row["step"] for row in r.curve] == [2, 4]
    )


def test_sweep_returns_the_best_run() -> None:
    cfg = TrainConfig(steps=30, batch_size=16, eval_every=15, warmup_steps=2)
    best, runs = sweep([1e-6, 1e-2], model_fn, copy_prev_batch, loss_fn, acc_fn, cfg)
    assert [r.config.lr for r in runs] == [1e-6, 1e-2] and best is runs[1]
    with pytest.raises(ValueError, match="at least one learning rate"):
        sweep([], model_fn, copy_prev_batch, loss_fn, acc_fn, cfg)


def test_schedule_and_config_errors() -> None:
    cfg = TrainConfig(steps=10, warmup_steps=2)
    assert [round(cfg.lr_at(s), 3) for s in (0, 1, 2)] == [0.5, 1.0, 1.0] and cfg.lr_at(10) == 0.0
    for kw, match in [({"steps": 0}, "steps must be an int >= 1"), ({"lr": -1.0}, "lr must be"),
                      ({"grad_clip": 0.0}, "grad_clip must be > 0"), ({"warmup_steps": -1}, "warmup_steps")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            TrainConfig(**kw)


def test_sequence_model_shapes_pooling_and_errors() -> None:
    x = torch.randint(0, V, (2, T))
    assert model_fn()(x).shape == (2, T, V)
    m = SequenceModel(vocab_size=V, d_model=32, num_layers=2, mixer="gla", causal=False,
                      num_outputs=10, pool="mean", positions=False, short_conv=3)  # fmt: skip
    assert m(x).shape == (2, 10)
    with pytest.raises(ValueError, match="mixer must be a registered 1-D mixer, got 'lka'"):
        SequenceModel(vocab_size=V, d_model=32, num_layers=1, mixer="lka")
    with pytest.raises(ValueError, match="'lightning' does not support noncausal-self"):
        SequenceModel(vocab_size=V, d_model=32, num_layers=1, mixer="lightning", causal=False)
    with pytest.raises(ValueError, match="pool must be one of none, mean, last"):
        SequenceModel(vocab_size=V, d_model=32, num_layers=1, mixer="softmax", pool="max")
    with pytest.raises(ValueError, match=r"tokens must be in \[0, vocab_size=16\)"):
        model_fn()(torch.full((1, 3), 16))
    with pytest.raises(ValueError, match="sequence length 13 > max_len=12"):
        model_fn()(torch.zeros(1, 13, dtype=torch.long))


def test_short_conv_is_causal() -> None:
    m = SequenceModel(vocab_size=V, d_model=16, num_layers=1, mixer="linear", short_conv=4)
    x = torch.randint(0, V, (1, T))
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % V
    torch.testing.assert_close(
        m(x)[:, :-1], m(y)[:, :-1]
    )  # changing the last token changes no earlier output


def test_predict_fn_feeds_the_metric_and_not_the_loss() -> None:
    """The metric sees predict_fn(model, inputs) (e.g. greedy decoding); the eval loss still sees
    model(inputs)."""
    seen = []

    def oracle(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        seen.append(model.training)
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)  # the right answer

    def metric(pred: torch.Tensor, y: torch.Tensor) -> float:
        keep = y != -100
        return float((pred[keep] == y[keep]).float().mean())

    cfg = TrainConfig(steps=4, batch_size=8, eval_every=2, eval_batches=2, lr=1e-6)
    r = train(model_fn, copy_prev_batch, loss_fn, metric, cfg, predict_fn=oracle)
    plain = train(model_fn, copy_prev_batch, loss_fn, acc_fn, cfg)
    assert [row["metric"] for row in r.curve] == [1.0, 1.0] and seen == [False] * 4
    assert [row["eval_loss"] for row in r.curve] == [row["eval_loss"] for row in plain.curve]
    assert plain.curve[-1]["metric"] < 0.5  # lr 1e-6: the model itself is still at chance


def test_held_out_replaces_the_drawn_batches() -> None:
    calls = []

    def counting(batch_size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(batch_size)
        return copy_prev_batch(batch_size, g)

    fixed = [copy_prev_batch(5, torch.Generator().manual_seed(9))]
    cfg = TrainConfig(steps=3, batch_size=4, eval_every=3, eval_batches=7)
    r = train(model_fn, counting, loss_fn, acc_fn, cfg, held_out=fixed)
    assert calls == [4, 4, 4]  # training batches only: no held-out draws
    assert r.curve[0]["metric"] >= 0.0
    with pytest.raises(ValueError, match=r"held_out must hold at least one .* got \[\]"):
        train(model_fn, counting, loss_fn, acc_fn, cfg, held_out=[])


def test_extra_evals_run_once_on_the_final_model() -> None:
    log: list[tuple[bool, bool, float]] = []

    def probe(model: torch.nn.Module) -> float:
        w = float(model.head.weight.sum())
        log.append((model.training, torch.is_grad_enabled(), w))
        return w

    cfg = TrainConfig(steps=6, batch_size=8, eval_every=3, lr=1e-2, warmup_steps=1)
    r = train(model_fn, copy_prev_batch, loss_fn, acc_fn, cfg, extra_evals={"w": probe})
    torch.manual_seed(cfg.seed)
    initial = float(model_fn().head.weight.detach().sum())
    assert len(log) == 1 and log[0][:2] == (False, False)
    assert r.extra == {"w": log[0][2]} and r.extra["w"] != initial  # trained weights

    drawn: list[int] = []

    def interrupting(batch_size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        drawn.append(batch_size)
        if len(drawn) > cfg.eval_batches + 2:  # Ctrl-C during the third training step
            raise KeyboardInterrupt
        return copy_prev_batch(batch_size, g)

    r = train(model_fn, interrupting, loss_fn, acc_fn, cfg, extra_evals={"w": probe})
    assert r.status == "interrupted" and r.extra == {} and len(log) == 1


def test_a_blocks_auxiliary_loss_is_trained() -> None:
    """Routing attention's commitment loss reaches backward through the trainer: its centroids
    take EMA steps during training (they never move in a forward alone)."""
    from attnzoo.mixers.base import auxiliary_loss

    built: list[SequenceModel] = []

    def routed() -> SequenceModel:
        m = SequenceModel(vocab_size=V, d_model=32, num_layers=1, mixer="routing", max_len=T,
                          mixer_kwargs={"num_heads": 2, "num_clusters": 2})  # fmt: skip
        built.append(m)
        return m

    probe = routed()
    before = probe.state_dict()["blocks.0.mixer.centroids"].clone()
    probe.train()
    probe(torch.randint(0, V, (2, T)))
    aux = auxiliary_loss(probe)
    assert aux is not None and aux.requires_grad and float(aux.detach()) > 0
    assert torch.equal(probe.state_dict()["blocks.0.mixer.centroids"], before)
    assert auxiliary_loss(model_fn()) is None  # softmax has none
    r = train(
        routed, copy_prev_batch, loss_fn, acc_fn, TrainConfig(steps=3, batch_size=4, eval_every=3)
    )
    assert r.status == "complete"
    assert not torch.equal(built[-1].state_dict()["blocks.0.mixer.centroids"], before)
