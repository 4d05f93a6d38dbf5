"""A small store for the site's tests (speed, checks, quality and peer rows of a few
mechanisms) and the site built from it once per session, plus one built without a store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnzoo.site import build_site
from attnzoo.store import Store
from tests.report.synthetic import peer_row, peer_run, sound_store

MQAR = {"task": "mqar", "description": "multi-query associative recall", "metric": "accuracy",
        "maximize": True, "patterns": ["causal-self"], "fmt": ".3f", "bounded": True,
        "tokens": 64, "point_keys": [["seq_len", "L"], ["num_kv_pairs", "kv"]]}  # fmt: skip
MQAR_CONFIG = json.dumps({"num_kv_pairs": 4, "seq_len": 64, "vocab_size": 256}, sort_keys=True)
# (mechanism, width, accuracy): softmax is best at both widths
QUALITY = [("softmax", 32, 0.90), ("softmax", 64, 0.99), ("linear", 32, 0.60),
           ("linear", 64, 0.75), ("gla", 64, 0.85)]  # fmt: skip


def quality_run(store: Store) -> int:
    run = store.begin_run(kind="quality", suite="quick", command="attnzoo bench quality",
                          config={}, env={}, allow_concurrent=True)  # fmt: skip
    store.add_task(run, {**MQAR, "task_config": MQAR_CONFIG})
    for mixer, d, acc in QUALITY:
        store.add_quality(run, {
            "task": "mqar", "task_config": MQAR_CONFIG, "mixer": mixer, "d_model": d,
            "num_layers": 2, "lr": 1e-3, "seed": 0, "params": 1000 * d, "state_size": None,
            "steps_run": 100, "status": "complete", "final_metric": acc, "best_metric": acc,
            "best_of_sweep": True, "seconds": 2.0,
        })  # fmt: skip
    store.finish_run(run, "complete")
    return run


def site_store(path: Path) -> Store:
    """Speed rows of softmax, linear and area over 16x of lengths (exponents supported), a
    correctness check, an MQAR point trained by softmax, linear and gla, and peer rows of
    linear (one unreliable)."""
    store, speed = sound_store(path)
    store.add_check(speed, {"mixer": "linear", "impl": "fast", "pattern": "causal-self",
                            "max_abs_err": 1e-6, "ok": True, "detail": ""})  # fmt: skip
    quality_run(store)
    peer_run(store, [peer_row("linear/fwd"), peer_row("linear/fwdbwd", repeats=1)])
    return Store(path, read_only=True)


@pytest.fixture(scope="session")
def measured_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site")
    build_site(root / "site", site_store(root / "s.duckdb"))
    return root / "site"


@pytest.fixture(scope="session")
def bare_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bare") / "site"
    build_site(out, None)
    return out
