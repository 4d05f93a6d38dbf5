"""`attnzoo bench quality --executor ray`: grid points as Ray tasks on a local cluster of two
worker processes (one for the module: Ray starts slowly), the driver alone writing the store.

The same tiny suite gives the same rows as the local executor; a worker killed mid-point is
retried; with no retries left, or when the point's code raises, its models are stored as
``failed`` with a ``point-failed`` note (shown by the CLI and the report); Ctrl-C cancels what
is still running; without Ray, ``--executor ray`` says how to install it. Faults are injected by
replacing ``quality.train_point`` (which the driver sends to the workers) with a wrapper defined
in a test: no hook in the library.
"""

from __future__ import annotations

import importlib.machinery
import json
import logging
import os
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from attnzoo.bench import executors, quality
from attnzoo.bench.executors import ExecutorError, LocalExecutor, RayExecutor
from attnzoo.bench.quality import QualitySuite, run_quality
from attnzoo.bench.runs import RunInterrupted
from attnzoo.bench.train import TrainResult
from attnzoo.cli import app
from attnzoo.extras import MissingExtra
from attnzoo.report.html import build_report
from attnzoo.store import Store

TINY = {"vocab_size": 32, "seq_len": 16, "num_kv_pairs": 2, "random_non_queries": False}
SUITE = QualitySuite(mixers=("softmax", "linear"), d_models=(16,), lrs=(1e-6, 3e-3), steps=6,
                     batch_size=8, eval_every=3, eval_batches=1, target=None,
                     task_settings=TINY)  # fmt: skip
CLI_ARGS = ["bench", "quality", "--mixers", "softmax,linear", "--d-model", "16", "--lrs",
            "1e-6,3e-3", "--steps", "6", "--batch-size", "8", "--set",
            ",".join(f"{k}={json.dumps(v)}" for k, v in TINY.items()), "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A new local Ray instance with 2 CPUs (two 1-CPU worker processes), for the module."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, object_store_memory=80 * 2**20)  # fmt: skip
    yield ray
    ray.shutdown()


def faulty(fault: Callable[[], None], mixer: str | None, marker: Path | None = None) -> Callable:
    """``train_point`` that runs ``fault`` first on points of ``mixer`` (``None``: every point;
    once, if ``marker`` is given: the marker file says it happened). A closure, so Ray ships it
    by value."""
    real = quality.train_point

    def point_fn(suite: QualitySuite, point: Any, on_update: Any = None) -> Any:
        if mixer in (None, point.mixer) and (marker is None or not marker.exists()):
            if marker is not None:
                marker.touch()
            fault()
        return real(suite, point, on_update)

    return point_fn


def sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def one_thread() -> None:
    """In a worker: torch uses the task's one CPU (else: a failed point)."""
    import torch

    if torch.get_num_threads() != 1:
        raise AssertionError(f"torch uses {torch.get_num_threads()} threads in a 1-CPU task")


def boom() -> None:
    raise RuntimeError("boom: a bug in the point's code")


def notes(store: Store, run: int, kind: str) -> list[dict[str, Any]]:
    """The run's notes of ``kind`` (a busy machine adds ``machine-busy`` ones)."""
    return [n for n in store.notes([run]) if n["kind"] == kind]


def _rows(store: Store, run: int) -> dict[str, list[dict[str, Any]]]:
    def key(r: dict[str, Any]) -> tuple:
        return (r["task_config"], r["mixer"], r["lr"], r.get("step", 0))

    drop = {"run_id", "recorded_at", "seconds"}
    out = {}
    for name, rows in (("quality", store.quality([run])), ("curves", store.curves([run])),
                       ("tasks", store.tasks([run]))):  # fmt: skip
        out[name] = [{k: v for k, v in r.items() if k not in drop}
                     for r in sorted(rows, key=key if name != "tasks" else str)]  # fmt: skip
    return out


def test_ray_gives_the_local_rows(
    cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local, remote = Store(tmp_path / "local.duckdb"), Store(tmp_path / "ray.duckdb")
    a = run_quality(SUITE, local, progress=False, executor=LocalExecutor())
    monkeypatch.setattr(quality, "train_point", faulty(one_thread, None))
    b = run_quality(SUITE, remote, progress=False, executor=RayExecutor(retries=1))
    want, got = _rows(local, a), _rows(remote, b)
    assert {k: len(v) for k, v in got.items()} == {"quality": 4, "curves": 8, "tasks": 1}
    assert {k: len(v) for k, v in got.items()} == {k: len(v) for k, v in want.items()}
    for name in want:
        for w, g in zip(want[name], got[name], strict=True):
            assert g.keys() == w.keys()
            for col, value in w.items():  # torch threads differ (2 here, 1 per worker)
                close = isinstance(value, float) and g[col] == pytest.approx(value, rel=1e-4)
                assert g[col] == value or close, (name, col, g[col], value)
    assert remote.run(b)["status"] == "complete"
    (note,) = notes(remote, b, "executor")
    assert "Ray" in note["text"] and "--retries 1" in note["text"]
    assert notes(local, a, "executor") == []


def test_a_task_sets_torch_threads_to_its_cpus() -> None:
    """Ray's workers start with OMP_NUM_THREADS=1 for 1-CPU tasks; the task sets torch's thread
    count itself (a reused worker, a task of 2 CPUs, a cluster with other defaults)."""
    torch.set_num_threads(2)
    seen = executors._in_worker(lambda item, on_update: (item, torch.get_num_threads()), "p", 1)
    assert seen == ("p", 1)
    assert RayExecutor(num_cpus=2).threads == 2 and RayExecutor(num_cpus=0.5).threads == 1


def test_a_killed_worker_is_retried(
    cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "killed-once"
    monkeypatch.setattr(quality, "train_point", faulty(sigkill, "linear", marker))
    store = Store(tmp_path / "k.duckdb")
    run = run_quality(SUITE, store, progress=False, executor=RayExecutor(retries=1))
    rows = store.quality([run])
    assert marker.exists()  # the first attempt died
    assert len(rows) == 4 and {r["status"] for r in rows} == {"complete"}
    assert sorted(r["mixer"] for r in rows if r["best_of_sweep"]) == ["linear", "softmax"]
    assert notes(store, run, "point-failed") == [] and len(notes(store, run, "executor")) == 1


def test_no_retries_left_stores_the_point_as_failed(
    cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the CLI: the run completes, the point's models are stored as failed, the note
    names the point and the error, and the CLI and the report show them."""
    monkeypatch.setattr(quality, "train_point", faulty(sigkill, "linear", tmp_path / "m"))
    db = tmp_path / "f.duckdb"
    r = CliRunner().invoke(app, [*CLI_ARGS, "--db", str(db), "--executor", "ray",
                                 "--retries", "0"])  # fmt: skip
    assert r.exit_code == 0, r.output
    store = Store(db)
    (run,) = [x["run_id"] for x in store.runs("quality")]
    assert store.run(run)["status"] == "complete"
    rows = store.quality([run])
    failed = [x for x in rows if x["status"] == "failed"]
    assert len(rows) == 4 and {x["mixer"] for x in failed} == {"linear"} and len(failed) == 2
    assert all(x["best_metric"] is None and x["steps_run"] == 0 and x["params"] > 0
               and not x["best_of_sweep"] for x in failed)  # fmt: skip
    (note,) = notes(store, run, "point-failed")
    assert "mqar" in note["text"] and "linear d=16 seed=0" in note["text"]
    assert "WorkerCrashedError" in note["text"] and "--retries 0" in note["text"]
    assert "2 of 4 models failed" in r.stderr and "WorkerCrashedError" in r.stderr
    assert "softmax" in r.stdout  # the best-of-sweep table keeps the points that trained
    html = build_report(store, [store.begin_run(kind="speed", suite="t", command="t", config={},
                                                env={}, allow_concurrent=True)])  # fmt: skip
    assert "4 (2 failed)" in html and "point-failed" in html and "WorkerCrashedError" in html


def test_an_exception_in_a_worker_is_stored_as_failed(
    cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug raises again: not retried, recorded with its message, the other points kept."""
    monkeypatch.setattr(quality, "train_point", faulty(boom, "softmax"))
    store = Store(tmp_path / "e.duckdb")
    run = run_quality(SUITE, store, progress=False, executor=RayExecutor(retries=3))
    rows = store.quality([run])
    assert {(x["mixer"], x["status"]) for x in rows} == {("softmax", "failed"),
                                                         ("linear", "complete")}  # fmt: skip
    (note,) = notes(store, run, "point-failed")
    assert "RuntimeError: boom: a bug in the point's code" in note["text"]
    assert "in a Ray worker" in note["text"] and "boom" in note["text"]
    assert store.run(run)["status"] == "complete"


def test_a_failing_model_locally_keeps_the_rest_of_its_sweep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Local executor: the model of one learning rate raises; its row is failed, the other
    learning rate of the point is trained and flagged best."""
    real = quality.train

    def train(*args: Any, **kwargs: Any) -> TrainResult:
        if args[4].lr == 3e-3:
            raise FloatingPointError("loss is nan")
        return real(*args, **kwargs)

    monkeypatch.setattr(quality, "train", train)
    store = Store(tmp_path / "l.duckdb")
    run = run_quality(SUITE.replace(mixers=("linear",)), store, progress=False)
    rows = {x["lr"]: x for x in store.quality([run])}
    assert rows[3e-3]["status"] == "failed" and rows[1e-6]["status"] == "complete"
    assert rows[1e-6]["best_of_sweep"] and not rows[3e-3]["best_of_sweep"]
    assert rows[3e-3]["params"] == rows[1e-6]["params"]
    (note,) = notes(store, run, "point-failed")
    assert "lr=0.003 failed: FloatingPointError" in note["text"]
    assert "loss is nan (at test_quality_ray.py:" in note["text"]


def test_missing_ray_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    with pytest.raises(MissingExtra, match=r"pip install 'attnzoo\[ray\]'"):
        RayExecutor()
    r = CliRunner().invoke(app, [*CLI_ARGS, "--db", str(tmp_path / "n.duckdb"),
                                 "--executor", "ray"])  # fmt: skip
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [
        "error: --executor ray needs attnzoo's [ray] extra (ray not installed): "
        "pip install 'attnzoo[ray]'"
    ]
    assert not (tmp_path / "n.duckdb").exists()  # said before anything ran
    bad = CliRunner().invoke(app, [*CLI_ARGS, "--ray-address", "auto"])
    assert bad.exit_code == 2 and "--ray-address needs --executor ray" in bad.stderr


def test_no_cluster_at_the_address_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("ray")
    fake.__spec__ = importlib.machinery.ModuleSpec("ray", None)

    def init(**kwargs: Any) -> None:
        raise ConnectionError("Could not find any running Ray instance.\nmore detail")

    fake.is_initialized, fake.init = (lambda: False), init  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(ExecutorError) as e, RayExecutor("auto"):
        pass
    assert str(e.value).startswith("--ray-address auto: could not start or attach Ray (Could not")
    assert "ray start --head --num-cpus 2" in str(e.value)


def test_importing_the_bench_does_not_import_ray() -> None:
    code = ("import sys, attnzoo, attnzoo.bench.quality, attnzoo.bench.executors, attnzoo.cli; "
            "print('ray' in sys.modules)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_ctrl_c_cancels_the_points_still_running(
    cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in the driver while a point still trains: the run is marked interrupted with what
    arrived, and the running point is cancelled (both CPUs free again at once). Last: the
    cancel kills its worker."""
    monkeypatch.setattr(quality, "train_point", faulty(lambda: time.sleep(120), "linear"))
    real = quality.record_point

    def record_then_ctrl_c(*args: Any) -> None:
        real(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(quality, "record_point", record_then_ctrl_c)
    store = Store(tmp_path / "c.duckdb")
    start = time.monotonic()
    with pytest.raises(RunInterrupted) as e:
        run_quality(SUITE, store, progress=False, executor=RayExecutor())
    run = store.run(e.value.run_id)
    assert run["status"] == "interrupted" and "Ctrl-C" in run["note"]
    assert {x["mixer"] for x in store.quality([run["run_id"]])} == {"softmax"}
    both = cluster.remote(num_cpus=2)(lambda: "free")
    assert cluster.get(both.remote(), timeout=60) == "free"
    assert time.monotonic() - start < 60
