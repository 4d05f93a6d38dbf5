"""`attnzoo bench peers`: the runner records agreement, ratios, skips and failures honestly; the
registered linear-family cases agree with fla-core; the report and the CLI show them."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import torch
from typer.testing import CliRunner

from attnzoo.bench import measure
from attnzoo.bench import peers as P
from attnzoo.cli import app
from attnzoo.report.html import build_report
from attnzoo.store import Store
from attnzoo.store.schema import LATEST, MIGRATIONS
from tests.bench.test_measure import FakeClock


def _case(name: str, peer_delta: float = 0.0, requires: tuple[str, ...] = (), fail: bool = False):
    def build(n: int, g: torch.Generator) -> P.PeerPair:
        if fail:
            raise RuntimeError("cannot build")
        x = torch.randn(n, generator=g)
        return P.PeerPair(ours=lambda: x * 2, peer=lambda: x * 2 + peer_delta, flops=2 * n,
                          size=f"n={n}")  # fmt: skip

    return P.PeerCase(name, "softmax", "fake", requires, build, (8,), (8,))


@pytest.fixture
def fake_cases(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    P.get_cases(None)
    cases = [_case("same"), _case("differs", peer_delta=1.0), _case("absent",
             requires=("no_such_module_xyz",)), _case("broken", fail=True)]  # fmt: skip
    for c in cases:
        monkeypatch.setitem(P.CASES, c.name, c)
    return [c.name for c in cases]


def test_runner_records_agreement_skips_and_failures(tmp_path: Path, fake_cases: list[str]) -> None:
    store = Store(tmp_path / "p.duckdb")
    plan = P.PeerPlan(cases=tuple(fake_cases), repeats=2, warmup=0, memory=False)
    run = P.run_peers(plan, store, progress=False)
    rows = {r["case_name"]: r for r in store.peers([run])}
    assert set(rows) == {"same", "differs"}
    assert rows["same"]["ok"] and rows["same"]["max_abs_diff"] == 0.0
    assert not rows["differs"]["ok"] and rows["differs"]["max_abs_diff"] == pytest.approx(1.0)
    assert all(r["ratio"] > 0 and r["ours_flops"] == 16 for r in rows.values())
    skips = {s["impl"]: s for s in store.skips([run])}
    assert skips["peer:absent"]["kind"] == "skipped"
    assert "no_such_module_xyz not installed" in skips["peer:absent"]["reason"]
    assert skips["peer:broken"]["kind"] == "failed"
    assert "RuntimeError: cannot build" in skips["peer:broken"]["reason"]
    assert store.run(run)["status"] == "complete" and store.run(run)["kind"] == "peers"


def test_memory_profiled_unless_a_call_is_too_long(
    tmp_path: Path, fake_cases: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "p.duckdb")
    plan = P.PeerPlan(cases=("same",), repeats=2, warmup=0, memory=True)
    row = store.peers([P.run_peers(plan, store, progress=False)])[0]
    assert row["ours_peak_bytes"] >= 32 and row["peer_peak_bytes"] >= 32  # x * 2: 8 float32s
    assert "GFLOP/s in the same window" in row["detail"]
    monkeypatch.setattr(P, "PROFILE_MAX_S", 0.0)
    row = store.peers([P.run_peers(plan, store, progress=False)])[0]
    assert row["ours_peak_bytes"] is None and row["peer_peak_bytes"] is None
    assert "ours's peak memory not profiled" in row["detail"]
    assert "peer's peak memory not profiled" in row["detail"]


def _timed_case(clock: FakeClock, ours_s: list[float], peer_s: list[float]) -> P.PeerCase:
    """A case whose two sides take these fake durations, call after call (the first call of
    each is the agreement check's)."""

    def build(n: int, g: torch.Generator) -> P.PeerPair:
        x = torch.zeros(n)
        ours, peer = clock.call("ours", ours_s), clock.call("peer", peer_s)
        return P.PeerPair(ours=lambda: (ours(), x)[1], peer=lambda: (peer(), x)[1], flops=0,
                          size=f"n={n}")  # fmt: skip

    return P.PeerCase("timed", "softmax", "fake", (), build, (8,), (8,))


@pytest.mark.parametrize(
    "peer_s,repeats,spread,doubt",
    [
        ([2.0] * 6, 5, 0.0, None),
        ([2.0, 1.0, 3.0, 3.0, 1.0, 2.0], 5, 1.0, "ratio unreliable: peer spread 100% > 25%"),
        ([2.0] * 3, 2, None, "ratio unreliable: 2 repeats < 3, no measured spread"),
    ],
    ids=["steady", "noisy-peer", "few-repeats"],
)
def test_ratio_records_both_spreads_and_says_when_it_is_unreliable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, peer_s: list[float], repeats: int,
    spread: float | None, doubt: str | None,
) -> None:  # fmt: skip
    clock = FakeClock()
    monkeypatch.setattr(measure, "time", clock)
    store = Store(tmp_path / "p.duckdb")
    run = store.begin_run(kind="peers", suite="custom", command="t", config={}, env={})
    case = _timed_case(clock, [1.0] * (repeats + 1), peer_s)
    P._one(store, run, case, 8, P.PeerPlan(repeats=repeats, warmup=0, memory=False))
    (row,) = store.peers([run])
    assert row["ours_s"] == 1.0 and row["peer_s"] == 2.0 and row["ratio"] == 2.0
    assert row["peer_spread"] == spread and row["ours_spread"] == (None if spread is None else 0.0)
    if doubt is None:
        assert "unreliable" not in row["detail"]
    else:
        assert row["detail"].startswith(doubt)


def test_compare_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"ours has shape \(2,\), the peer \(3,\)"):
        P.compare(torch.zeros(2), torch.zeros(3))


P.get_cases(None)  # the block files register their cases


@pytest.mark.parametrize("name", sorted(P.CASES))
def test_every_registered_case_agrees_with_its_peer(name: str) -> None:
    """At each case's small smoke size: the peer package is installed (pinned test dependency),
    and ours equals it within the case's tolerance, in the layout the case compares."""
    case = P.CASES[name]
    assert case.missing() == []
    pair = case.build(case.smoke_size, torch.Generator().manual_seed(0))
    _, rel = P.compare(*pair.outputs())
    assert rel <= case.rtol


def test_unknown_case_suggests() -> None:
    with pytest.raises(
        ValueError, match="unknown peer case 'linear/fla-naive-chnk' .*did you mean"
    ):
        P.get_cases(["linear/fla-naive-chnk"])


def test_cli_list_run_and_report(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "peers", "--list"])
    assert res.exit_code == 0 and "linear/fla-naive-chunk" in res.output and "ready" in res.output
    db = tmp_path / "c.duckdb"
    res = runner.invoke(app, ["bench", "peers", "--db", str(db), "--cases",
                              "linear/fla-naive-chunk", "--sizes", "64", "--repeats", "1",
                              "--no-progress"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "linear/fla-naive-chunk" in res.output and "yes" in res.output
    bad = runner.invoke(app, ["bench", "peers", "--db", str(db), "--cases", "nope"])
    assert bad.exit_code != 0 and "unknown peer case 'nope'" in bad.output
    store = Store(db)
    run = store.begin_run(kind="speed", suite="t", command="t", config={}, env={})
    store.finish_run(run, "complete")
    html = build_report(store, [run])
    assert 'id="peers-table"' in html and "fla naive_chunk_linear_attn" in html


def test_v1_store_migrates_to_latest_keeping_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    for sql in MIGRATIONS[0][2]:
        con.execute(sql)
    con.execute("INSERT INTO attnzoo_meta VALUES ('app', 'attnzoo-store'), ('schema_version', '1')")
    con.execute(
        "INSERT INTO runs (kind, status, started_at, env, config) "
        "VALUES ('speed', 'complete', now(), '{}', '{}')"
    )
    con.close()
    reader = Store(path, read_only=True)  # a reader (report, make readme) does not migrate
    assert [r["kind"] for r in reader.runs()] == ["speed"] and reader.peers() == []
    assert reader.schema_version == 1
    store = Store(path)
    assert store.schema_version == LATEST >= 2
    assert [r["kind"] for r in store.runs()] == ["speed"]
    assert store.peers() == []


def test_training_cases_are_known_by_name() -> None:
    """A case that times forward + backward carries '-train' in its "ours" half, which is how a
    stored run's rows are told apart (the README's forward ratio); its notes say so too."""
    P.get_cases(None)
    trains = [case for name, case in P.CASES.items() if P.times_training(name)]
    assert {c.mechanism for c in trains} == {"linear", "lightning", "gla"}
    assert all("forward + backward" in c.notes for c in trains)
    others = [c for n, c in P.CASES.items() if not P.times_training(n)]
    assert others and not any("forward + backward" in c.notes for c in others)
    assert P.times_training("gone-train/peer") and not P.times_training("gone/peer-train")
