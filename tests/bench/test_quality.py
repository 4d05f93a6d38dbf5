"""`attnzoo bench quality`: the runner stores rows, curves and the best-of-sweep flag; the CLI
and the report show them; state sizes; bad flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from attnzoo.bench import quality
from attnzoo.bench.quality import (
    SUITES,
    TASKS,
    QualitySuite,
    TaskParts,
    check_suite,
    run_quality,
    state_size,
)
from attnzoo.bench.train import TrainResult
from attnzoo.cli import app
from attnzoo.report.html import build_report
from attnzoo.store import Store
from attnzoo.tasks import digits, pointer
from attnzoo.tasks.pointer_net import PointerNet, greedy_accuracy

TINY = {"vocab_size": 32, "seq_len": 16, "num_kv_pairs": 2, "random_non_queries": False}


def test_runner_stores_rows_curves_and_best_lr(tmp_path: Path) -> None:
    store = Store(tmp_path / "q.duckdb")
    suite = QualitySuite(mixers=("softmax", "linear"), d_models=(16,), lrs=(1e-6, 3e-3), steps=6,
                         batch_size=8, eval_every=3, eval_batches=1, target=None,
                         task_settings=TINY)  # fmt: skip
    run = run_quality(suite, store, progress=False)
    rows = store.quality([run])
    assert len(rows) == 4 and {r["status"] for r in rows} == {"complete"}
    assert all(r["steps_run"] == 6 and r["params"] > 0 for r in rows)
    best = [r for r in rows if r["best_of_sweep"]]
    assert sorted(r["mixer"] for r in best) == ["linear", "softmax"]
    curves = store.curves([run])
    assert len(curves) == 8 and {c["step"] for c in curves} == {3, 6}
    assert store.run(run)["kind"] == "quality" and store.run(run)["status"] == "complete"
    html = build_report(
        store, [store.begin_run(kind="speed", suite="t", command="t", config={}, env={})]
    )
    assert 'id="quality-table"' in html


def test_listops_trains_a_step(tmp_path: Path) -> None:
    store = Store(tmp_path / "l.duckdb")
    suite = QualitySuite(tasks=("listops",), mixers=("softmax",), d_models=(16,), steps=2,
                         batch_size=4, eval_every=2, eval_batches=1, target=None,
                         task_settings={"max_depth": 3, "max_args": 4, "min_length": 8,
                                        "max_length": 32})  # fmt: skip
    run = run_quality(suite, store, progress=False)
    (row,) = store.quality([run])
    assert row["task"] == "listops" and row["steps_run"] == 2 and 0 <= row["final_metric"] <= 1


def test_regression_minimises_mse_and_flags_the_lowest(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.duckdb")
    suite = QualitySuite(tasks=("regression",), mixers=("linear",), d_models=(16,),
                         lrs=(1e-6, 1e-2), steps=20, batch_size=8, eval_every=10, eval_batches=1,
                         task_settings={"d_x": 2, "num_pairs": 8})  # fmt: skip
    run = run_quality(suite, store, progress=False)
    rows = {r["lr"]: r for r in store.quality([run])}
    assert all(r["best_metric"] == min(c["metric"] for c in store.curves([run]) if c["lr"] == lr)
               for lr, r in rows.items())  # fmt: skip
    flagged = [r for r in rows.values() if r["best_of_sweep"]]
    assert len(flagged) == 1 and flagged[0]["best_metric"] == min(
        r["best_metric"] for r in rows.values()
    )


def test_state_sizes() -> None:
    assert state_size("linear", 16, 10) == 16 * 16 + 16  # one head: k^T v state + normaliser sum
    kv = state_size("softmax", 16, 10)
    assert kv is not None and kv >= 2 * 10 * 16  # keys and values of 10 tokens
    assert state_size("l2vit", 16, 10) is None


def test_quick_suite_is_mqar_softmax_vs_linear() -> None:
    q = SUITES["quick"]
    assert q.tasks == ("mqar",) and {"softmax", "linear"} <= set(q.mixers)


def test_cli_runs_and_rejects_bad_flags(tmp_path: Path) -> None:
    runner = CliRunner()
    db = str(tmp_path / "c.duckdb")
    r = runner.invoke(app, ["bench", "quality", "--db", db, "--mixers", "linear", "--d-model", "16",
                            "--steps", "2", "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "linear" in r.stdout and "mqar" in r.stdout
    bad = runner.invoke(app, ["bench", "quality", "--db", db, "--task", "mqr"])
    assert (
        bad.exit_code == 2
        and "unknown task 'mqr'" in bad.stderr
        and "did you mean 'mqar'" in bad.stderr
    )
    bad = runner.invoke(app, ["bench", "quality", "--db", db, "--suite", "zoo"])
    assert bad.exit_code == 2 and "--suite must be one of quick" in bad.stderr


# ---- task points, extra evaluations, pointer / image adapters, suites ----------------------

PTR = {"train_n": (3, 5), "test_n": (6, 8), "eval_examples": 20}


def few_steps(parts: TaskParts, lr: float, steps: int = 12) -> tuple[float, float]:
    """Loss on one fixed batch before and after ``steps`` AdamW steps on it."""
    torch.manual_seed(0)
    model = parts.model_fn()
    inputs, targets = parts.batch_fn(16, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    first = float(parts.loss_fn(model(inputs), targets).detach())
    for _ in range(steps):
        loss = parts.loss_fn(model(inputs), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, float(parts.loss_fn(model(inputs), targets).detach())


@pytest.mark.parametrize(
    ("task", "mixer", "settings", "lr", "ratio"),
    [("pointer-sort", "softmax", PTR, 3e-2, 0.8), ("pointer-hull", "gla", PTR, 1e-2, 0.9),
     ("shapes", "lka", {}, 3e-3, 0.8), ("digits", "softmax", {}, 3e-3, 0.8)],
)  # fmt: skip
def test_new_adapters_build_and_learn(
    task: str, mixer: str, settings: dict, lr: float, ratio: float
) -> None:
    """12 steps on one batch lower its loss (a tiny width-8 model; the hull fits slowest)."""
    parts = TASKS[task].build(mixer, 8, 1, dict(settings))
    before, after = few_steps(parts, lr=lr)
    assert after < ratio * before, (before, after)


@pytest.mark.parametrize("kind, mixer, mask_chosen", [("sort", "softmax", True),
                         ("hull", "linear", True), ("sort", "softmax", False)])  # fmt: skip
def test_greedy_decoding_respects_padding_and_the_exclusion(
    kind: str, mixer: str, mask_chosen: bool
) -> None:
    cfg = pointer.PointerConfig(task=kind, train_n=(3, 9))
    torch.manual_seed(1)
    net = PointerNet(mixer, 16, 1, cfg.feature_dim, kind == "hull", mask_chosen).eval()
    b = pointer.make_batch(cfg, 64, torch.Generator().manual_seed(2))
    preds = net.greedy(b)
    assert preds.shape == b.targets.shape and not net.training
    n_pad = b.inputs.shape[1]
    for row, n in zip(preds.tolist(), b.lengths.tolist(), strict=True):
        ptrs = [p for p in row if p != pointer.IGNORE_INDEX]
        if kind == "hull":
            assert ptrs.count(n_pad) == 1 and ptrs[-1] == n_pad  # one END, last
            ptrs = ptrs[:-1]
        else:
            assert len(ptrs) == n  # n pointers, then nothing
        assert all(0 <= p < n for p in ptrs)  # never padding
        assert len(set(ptrs)) == len(ptrs) or not mask_chosen  # no repeats when excluded
        assert row[: len(ptrs)] == ptrs or row[: len(ptrs) + 1][:-1] == ptrs  # no gaps
    # teacher forcing on the greedy choices reproduces them: decoding is causal-consistent
    tf = pointer.Batch(b.inputs, b.lengths, b.input_mask, preds,
                       pointer.exclusion_mask(preds, b.input_mask), b.end_index)  # fmt: skip
    with torch.no_grad():
        again = net(tf).argmax(-1)
    scored = preds != pointer.IGNORE_INDEX
    assert torch.equal(again[scored], preds[scored])


def test_untrained_sort_net_does_not_sort() -> None:
    """With chosen inputs masked, "point at the smallest left" sorts perfectly, and untrained
    nets whose scores happen to be monotone in the value do that (exact match 1.0): the sort
    task therefore decodes unconstrained (no exclusion), and an untrained net must fail it."""
    parts = TASKS["pointer-sort"].build("softmax", 64, 2, {"eval_examples": 128})
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        model = parts.model_fn().eval()
        assert not model.mask_chosen
        assert parts.extra_evals["greedy_n5_10"](model) < 0.5


def test_greedy_metric_is_not_teacher_forced() -> None:
    """A model that copies the teacher's pointers scores 1 teacher-forced but not greedily."""
    parts = TASKS["pointer-hull"].build("softmax", 8, 1, dict(PTR))
    b, targets = parts.batch_fn(32, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = parts.model_fn().eval()
    greedy = parts.metric_fn(parts.predict_fn(model, b), targets)
    assert greedy == pointer.metric(model.greedy(b), targets) < 0.5
    assert parts.metric_fn(targets, targets) == 1.0


def test_pointer_needs_both_patterns_and_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="mixer 'lightning' lacks the noncausal-self pattern"):
        PointerNet("lightning", 8, 1, 1, False)
    with pytest.raises(ValueError, match=r"mixer 'lka' lacks the tokens layout \(it is grid2d\)"):
        PointerNet("lka", 8, 1, 1, False)
    with pytest.raises(ValueError, match=r"unknown setting 'test_m' \(did you mean 'test_n'"):
        TASKS["pointer-sort"].build("softmax", 8, 1, {"test_m": (6, 9)})
    with pytest.raises(ValueError, match="unknown setting 'task'"):
        TASKS["pointer-sort"].build("softmax", 8, 1, {"task": "hull"})
    with pytest.raises(ValueError, match="eval_examples must be an int >= 1, got 0"):
        TASKS["pointer-sort"].build("softmax", 8, 1, {"eval_examples": 0})
    with pytest.raises(ValueError, match="shapes: image_size must be >= 32 .* got 16"):
        TASKS["shapes"].build("lka", 8, 1, {"image_size": 16, "min_scale": 0.25})
    with pytest.raises(ValueError, match="unknown setting 'vocab'"):
        check_suite(QualitySuite(points=(("mqar", {"vocab": 64}),)))
    with pytest.raises(ValueError, match="task 'pointer-sort', mixer 'lightning', d_model 64"):
        check_suite(QualitySuite(tasks=("pointer-sort",), mixers=("lightning",)))


def test_image_models_map_d_model_to_the_first_stage() -> None:
    parts = TASKS["digits"].build("area", 16, 3, {})
    model = parts.model_fn()
    assert model.dims == (16, 32, 64, 128) and model.depths == (1, 1, 3, 1)
    (images_, labels), = parts.held_out  # fmt: skip
    assert images_.shape == (
        len(digits.load_split(digits.DigitsConfig(), "test").labels),
        1,
        32,
        32,
    )
    assert model(images_[:2]).shape == (2, 10) and parts.seq_len is None


def test_pointer_suite_stores_extra_evals(tmp_path: Path) -> None:
    store = Store(tmp_path / "p.duckdb")
    suite = QualitySuite(points=(("pointer-sort", PTR),), mixers=("softmax",), d_models=(8,),
                         num_layers=1, lrs=(1e-3, 1e-2), steps=4, batch_size=8, eval_every=2,
                         eval_batches=1, target=None)  # fmt: skip
    run = run_quality(suite, store, progress=False)
    rows, evals = store.quality([run]), store.quality_evals([run])
    assert len(rows) == 2 and all(r["state_size"] is None for r in rows)
    names = ["greedy_n3_5", "greedy_n6_8", "pointers_n3_5", "pointers_n6_8"]
    assert sorted((e["lr"], e["name"]) for e in evals) == [(lr, n) for lr in (1e-3, 1e-2)
                                                           for n in names]  # fmt: skip
    assert all(0 <= e["value"] <= 1 and e["task_config"] == rows[0]["task_config"] for e in evals)
    assert json.loads(rows[0]["task_config"])["test_n"] == [6, 8]


def test_extra_evals_decode_eval_examples_of_their_range() -> None:
    """Each extra evaluation greedily decodes ``eval_examples`` fresh examples with n in its
    range; a decoder that answers the targets scores 1, one that never points right 0."""
    parts = TASKS["pointer-hull"].build("softmax", 8, 1, {**PTR, "eval_examples": 300})

    class Spy(torch.nn.Module):
        def __init__(self, right: bool) -> None:
            super().__init__()
            self.right, self.lengths = right, []

        def greedy(self, b: pointer.Batch) -> torch.Tensor:
            self.lengths += b.lengths.tolist()
            return b.targets if self.right else torch.full_like(b.targets, 10_000)  # never right

    for name, (lo, hi) in (("greedy_n3_5", (3, 5)), ("greedy_n6_8", (6, 8)),
                           ("pointers_n3_5", (3, 5)), ("pointers_n6_8", (6, 8))):  # fmt: skip
        spy = Spy(right=True)
        assert parts.extra_evals[name](spy) == 1.0
        assert len(spy.lengths) == 300 and set(spy.lengths) == set(range(lo, hi + 1))
        assert parts.extra_evals[name](Spy(right=False)) == 0.0


def test_pointer_accuracy_counts_right_pointers() -> None:
    """One wrong pointer of 5 (first example) and a right 3-pointer example: exact match 1/2,
    right pointers 7/8."""
    targets = torch.tensor([[0, 1, 2, 3, 4], [2, 0, 1, -100, -100]])
    preds = torch.tensor([[0, 1, 2, 4, 4], [2, 0, 1, 3, 3]])
    b = pointer.Batch(torch.zeros(2, 5, 1), torch.tensor([5, 3]), torch.ones(2, 5, dtype=torch.bool),
                      targets, torch.zeros(2, 5, 5, dtype=torch.bool), None)  # fmt: skip

    class Fixed(torch.nn.Module):
        def greedy(self, _: pointer.Batch) -> torch.Tensor:
            return preds

    assert greedy_accuracy(Fixed(), [b]) == 0.5
    assert greedy_accuracy(Fixed(), [b], per="pointer") == 7 / 8
    with pytest.raises(ValueError, match="per must be 'sequence' or 'pointer', got 'token'"):
        greedy_accuracy(Fixed(), [b], per="token")


def test_task_points_keep_their_own_best_and_curves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two MQAR points whose best learning rates differ (a stand-in trainer scores lr up at
    L = 16, down at L = 24): each point flags its own best; curves know their point."""

    def fake_train(model_fn, batch_fn, loss_fn, metric_fn, cfg, *, on_eval, **hooks):  # noqa: ANN001, ANN202
        length = batch_fn(1, torch.Generator().manual_seed(0))[0].shape[1]
        row = {"step": cfg.steps, "train_loss": 1.0, "eval_loss": 1.0, "seconds": 0.0,
               "metric": cfg.lr if length == 16 else 1.0 - cfg.lr}  # fmt: skip
        on_eval(row)
        return TrainResult(cfg, [row], "complete", cfg.steps, 0.0)

    monkeypatch.setattr(quality, "train", fake_train)
    store = Store(tmp_path / "z.duckdb")
    suite = QualitySuite(points=(("mqar", {**TINY, "seq_len": 16}), ("mqar", {**TINY, "seq_len": 24})),
                         mixers=("linear",), d_models=(8,), num_layers=1, lrs=(1e-6, 1e-2),
                         steps=4, target=None)  # fmt: skip
    assert suite.tasks == ("mqar",)
    run = run_quality(suite, store, progress=False)
    rows = store.quality([run])
    flagged = {json.loads(r["task_config"])["seq_len"]: r["lr"] for r in rows if r["best_of_sweep"]}
    assert len(rows) == 4 and flagged == {16: 1e-2, 24: 1e-6}
    curves = store.curves([run])
    assert len(curves) == 4 and {c["task_config"] for c in curves} == {
        r["task_config"] for r in rows
    }


def test_select_tasks_and_suites_validate() -> None:
    zoo = SUITES["zoology"]
    assert [(st["seq_len"], st["num_kv_pairs"], st["vocab_size"]) for _, st in zoo.points] == [
        (64, 4, 512), (128, 8, 512), (256, 16, 512)]  # fmt: skip
    assert zoo.d_models == (64, 128) and len(zoo.lrs) == 3 and zoo.tasks == ("mqar",)
    assert zoo.select_tasks(["mqar"]).grid_points() == zoo.grid_points()
    quick = SUITES["quick"].select_tasks(["listops", "mqar"])
    assert quick.grid_points() == (("mqar", SUITES["quick"].task_settings), ("listops", {}))
    with pytest.raises(ValueError, match="unknown task 'pointer'"):
        zoo.select_tasks(["pointer"])
    with pytest.raises(ValueError, match=r"points: each must be a \(task, settings dict\) pair"):
        QualitySuite(points=(("mqar",),))
    assert set(SUITES["listops"].tasks) == {"listops"}
    assert {"combiner", "routing", "hyena", "axial_ar"} <= set(SUITES["zoology"].mixers)
    for name in ("zoology", "listops", "pointer", "images", "regression"):
        suite = SUITES[name]
        assert suite.name == name and suite.lrs and suite.mixers
        check_suite(suite)  # every (point, mixer, width) model builds
    assert set(SUITES["pointer"].tasks) == {"pointer-sort", "pointer-hull"}
    assert set(SUITES["images"].tasks) == {"shapes", "digits"}
    assert {st["mode"] for _, st in SUITES["regression"].points} >= {"drift", "locally_linear"}
    assert {"lla", "softmax"} <= set(SUITES["regression"].mixers)


def test_cli_pointer_suite_shows_extra_evals(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["bench", "quality", "--db", str(tmp_path / "c.duckdb"),
                                 "--suite", "pointer", "--task", "pointer-sort", "--mixers",
                                 "softmax", "--d-model", "8", "--lrs", "1e-3", "--steps", "2",
                                 "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "pointer-sort" in r.stdout and "greedy_n11_20" in r.stdout
    bad = CliRunner().invoke(app, ["bench", "quality", "--db", str(tmp_path / "c.duckdb"),
                                   "--suite", "pointer", "--mixers", "lightning"])  # fmt: skip
    assert bad.exit_code == 2 and "lacks the noncausal-self pattern" in bad.stderr


def test_set_overrides_every_point_and_merges_identical_ones(tmp_path: Path) -> None:
    zoo = SUITES["zoology"]
    one = zoo.with_settings({"seq_len": 256, "num_kv_pairs": 16})
    assert len(zoo.grid_points()) == 3 and len(one.grid_points()) == 1
    ((task, settings),) = one.grid_points()
    assert task == "mqar" and settings["seq_len"] == 256 and settings["vocab_size"] == 512
    runner = CliRunner()
    bad = runner.invoke(app, ["bench", "quality", "--set", "seq_len", "--db", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "--set: expected key=value pairs" in bad.output
    wrong = runner.invoke(
        app, ["bench", "quality", "--set", "seq_lne=3", "--db", str(tmp_path / "x")]
    )
    assert wrong.exit_code != 0 and "seq_len" in wrong.output  # unknown setting, close match
