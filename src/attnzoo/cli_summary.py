"""The machine-readable summary every bench prints with ``--json``, and the rows of
``attnzoo results --format json``: stable, documented, versioned.

A bench's summary (one JSON object on stdout; progress and messages stay on stderr)::

    {"schema": 1, "kind": "speed", "run_id": 3, "status": "complete", "note": null,
     "db": "/abs/attnzoo.duckdb", "command": "attnzoo bench speed ...",
     "counts": {"rows": 40, "skipped": 2, "failed": 0},
     "rows": [{...}, ...], "skipped": [{...}, ...], "notes": [{"kind": ..., "text": ...}]}

- ``status``: ``complete``, ``interrupted`` (exit code 130; ``note`` says why) or ``failed``.
- ``rows``: one object per stored row with exactly the keys of :data:`ROW_KEYS` for the kind;
  ``skipped``: the work not done, with the keys of :data:`SKIP_KEYS`. Times in seconds, memory
  in bytes; a value the bench could not measure is ``null``.
- Stability: within one ``schema`` version keys are only ever added, never renamed, removed or
  given another meaning; a breaking change increments ``schema``. ``tests/cli/test_json.py``
  holds the keys to this list.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any

import typer

from attnzoo.bench.runs import RunInterrupted
from attnzoo.cli_common import EXIT_FAILURE, EXIT_INTERRUPTED, err, fail
from attnzoo.store import Store, StoreError

SCHEMA = 1
TOP_KEYS = ("schema", "kind", "run_id", "status", "note", "db", "command", "counts", "rows",
            "skipped", "notes")  # fmt: skip
ROW_KEYS: dict[str, tuple[str, ...]] = {
    "speed": ("run_id", "mixer", "impl", "pattern", "mask", "mode", "batch", "seq_len",
              "ctx_len", "d_model", "heads", "head_dim", "repeats", "median_s", "min_s", "q1_s",
              "q3_s", "max_s", "peak_bytes", "flops", "gflops_per_s", "gemm_fraction"),
    "peers": ("run_id", "case_name", "mechanism", "peer", "size", "n", "ours_s", "peer_s",
              "ratio", "ours_spread", "peer_spread", "gemm_fraction", "ours_peak_bytes",
              "peer_peak_bytes", "max_abs_diff", "rel_diff", "ok", "repeats"),
    "quality": ("run_id", "task", "task_config", "mixer", "d_model", "num_layers", "lr", "seed",
                "params", "state_size", "steps_run", "status", "final_metric", "best_metric",
                "best_of_sweep", "seconds"),
    "cp": ("run_id", "strategy", "sharding", "mask", "seq_len", "mode", "world_size", "rank",
           "latency_s", "rank_wall_s", "rank_cpu_s", "peak_bytes", "bytes_sent",
           "bytes_analytic", "pairs", "max_abs_err", "exact"),
}  # fmt: skip
SKIP_KEYS: dict[str, tuple[str, ...]] = {
    "speed": ("mixer", "impl", "pattern", "mask", "mode", "seq_len", "kind", "reason"),
    "peers": ("mixer", "impl", "pattern", "mask", "mode", "seq_len", "kind", "reason"),
    "quality": (),
    "cp": ("strategy", "sharding", "mask", "seq_len", "mode", "world_size", "reason"),
}  # fmt: skip
# ``attnzoo results --format json``: a list of speed rows with these keys (schema 1).
RESULTS_KEYS = ("run_id", "mixer", "impl", "pattern", "mask", "mode", "seq_len", "median_s",
                "peak_bytes", "gflops_per_s", "gemm_fraction")  # fmt: skip


def _rows(store: Store, kind: str, run_id: int) -> tuple[list[dict], list[dict]]:
    if kind == "speed":
        return store.speed([run_id]), store.skips([run_id])
    if kind == "peers":
        return store.peers([run_id]), store.skips([run_id])
    if kind == "quality":
        return store.quality([run_id]), []
    if kind == "cp":
        return store.cp([run_id]), store.cp_skips([run_id])
    raise ValueError(f"kind must be one of {', '.join(ROW_KEYS)}, got {kind!r}")


def pick(row: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``row`` reduced to ``keys`` (a key the store lacks, e.g. from an older run, is null)."""
    return {k: _plain(row.get(k)) for k in keys}


def _plain(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


def bench_summary(store: Store, kind: str, run_id: int) -> dict[str, Any]:
    """The ``--json`` summary of run ``run_id`` (see the module docstring)."""
    rows, skips = _rows(store, kind, run_id)
    info = store.run(run_id)
    failed = sum(1 for s in skips if s.get("kind") == "failed")
    return {
        "schema": SCHEMA,
        "kind": kind,
        "run_id": run_id,
        "status": info["status"],
        "note": info.get("note"),
        "db": str(store.path.resolve()),
        "command": info.get("command"),
        "counts": {"rows": len(rows), "skipped": len(skips) - failed, "failed": failed},
        "rows": [pick(r, ROW_KEYS[kind]) for r in rows],
        "skipped": [pick(s, SKIP_KEYS[kind]) for s in skips],
        "notes": [{"kind": n["kind"], "text": n["text"]} for n in store.notes([run_id])],
    }


def print_json(obj: Any) -> None:
    """One JSON document on stdout (never through rich: no wrapping, no markup)."""
    sys.stdout.write(json.dumps(obj, indent=1, default=str) + "\n")
    sys.stdout.flush()


JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print the run's summary as one JSON object on stdout instead of tables (keys: "
        "attnzoo.cli_summary; also when interrupted).",
    ),
]
KEPT = {"speed": "measurements", "peers": "measurements", "quality": "curves and models",
        "cp": "measurements"}  # fmt: skip


@contextmanager
def bench_exits(store: Store, kind: str, as_json: bool) -> Iterator[None]:
    """How every bench command ends when it cannot finish: Ctrl-C or SIGTERM during the run
    (the run is marked interrupted, what it measured is kept; with ``--json`` its summary is
    still printed) or before it started, exit code 130; a store failure, exit code 1."""
    try:
        yield
    except RunInterrupted as e:
        if as_json:
            print_json(bench_summary(store, kind, e.run_id))
        err.print(f"interrupted: run {e.run_id} marked interrupted; its {KEPT[kind]} are kept "
                  f"in {store.path}", soft_wrap=True, highlight=False)  # fmt: skip
        raise typer.Exit(code=EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:
        err.print("interrupted before the run started; nothing was recorded")
        raise typer.Exit(code=EXIT_INTERRUPTED) from None
    except StoreError as e:
        raise fail(str(e), EXIT_FAILURE) from None
