"""The report shows no figure its data cannot support (issue 15): exponents need three lengths
over 4x, efficiency lengths need crossing curves, GEMM fractions above 1 are errors, noisy and
few-repeat timings and unreliable peer ratios are marked, the top says how much was noisy and
what went wrong, a mechanism has one colour everywhere, and the index answers which to use."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from attnzoo import stats
from attnzoo.report import build_report
from attnzoo.report.html import Report
from attnzoo.report.palette import COLORS, Palette
from attnzoo.report.scaling import efficiency_length, scaling_exponent
from attnzoo.report.trust import peer_trust, timing_trust
from attnzoo.store import Store
from tests.report.synthetic import (
    BUSY,
    SPECS,
    peer_row,
    peer_run,
    sound_store,
    speed_row,
    speed_run,
    user_store,
)

CAUSAL = "speed-tokens-causal-self.html"


def cells_of(page: str, table_id: str) -> list[list[str]]:
    m = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', page, flags=re.S)
    assert m, f"table {table_id} missing"
    rows = re.findall(r"<tr>(.*?)</tr>", m.group(1), flags=re.S)
    return [re.findall(r"<td[^>]*>(.*?)</td>", r, flags=re.S) for r in rows]


def text(cell: str) -> str:
    return re.sub(r"<[^>]+>", "", cell).replace("&gt;", ">").replace("&lt;", "<").strip()


def svgs(page: str) -> list[str]:
    return re.findall(r"<svg.*?</svg>", page, flags=re.S)


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Report:
    store, _ = user_store(tmp_path_factory.mktemp("user") / "u.duckdb")
    return build_report(store)


@pytest.fixture(scope="module")
def sound(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, Report]:
    store, _ = sound_store(tmp_path_factory.mktemp("sound") / "s.duckdb")
    return store, build_report(store)


# ---- scaling exponents ----------------------------------------------------------------------
def test_two_lengths_give_no_exponent(user: Report) -> None:
    rows = cells_of(user.page(CAUSAL), "scaling-tokens-causal-self")
    assert [text(r[0]) for r in rows] == ["linear", "softmax"]
    for r in rows:
        time_exp, memory_exp = text(r[6]), text(r[7])
        assert time_exp.startswith("— (2 length(s)") and memory_exp.startswith("— (2 length(s)")
        assert not re.search(r"\d\.\d\d", time_exp + memory_exp)  # no number, only the reason
    exp = scaling_exponent([(64, 1e-3), (128, 0.1e-3)])
    assert exp.value is None and exp.reason == stats.supports_exponent([64, 128])


def test_three_lengths_over_4x_give_an_exponent_with_r2_and_ci(sound: tuple[Store, Report]) -> None:
    _, report = sound
    rows = {
        (text(r[0]), text(r[1])): r
        for r in cells_of(report.page(CAUSAL), "scaling-tokens-causal-self")
    }
    assert text(rows[("softmax", "fast")][6]) == "2.00 (95% CI 2.00..2.00, R² 1.000)"
    # linear's 1024 timing is noisy: its exponent is given, marked untrusted
    assert text(rows[("linear", "fast")][6]).startswith("~1.00 (95% CI")
    assert "noisy" in rows[("linear", "fast")][6]
    points = [(256, 1.0), (1024, 17.0), (4096, 250.0)]
    exp, fit = scaling_exponent(points), stats.fit_power_law(points)
    assert exp.fit == fit and exp.text() == (
        f"{fit.exponent:.2f} (95% CI {fit.ci[0]:.2f}..{fit.ci[1]:.2f}, R² {fit.r2:.3f})"
    )
    narrow = scaling_exponent([(256, 1.0), (384, 2.0), (512, 4.0)])  # three lengths, 2x
    assert narrow.value is None and "span 2.0x" in narrow.text()


# ---- efficiency lengths -----------------------------------------------------------------------
def test_efficiency_length_needs_crossing_curves() -> None:
    mine, base = {64: 2.0, 128: 0.1}, {64: 1.0, 128: 0.5}
    assert (
        efficiency_length(mine, base, trusted=set()).length is None
    )  # one untrusted point each side
    assert efficiency_length(mine, base, trusted={128}).length is None
    assert efficiency_length(mine, base, trusted={64, 128}).length == 128  # trusted both sides
    four_mine, four_base = {1: 2.0, 2: 2.0, 4: 1.0, 8: 1.0}, {1: 1.0, 2: 1.0, 4: 2.0, 8: 2.0}
    assert efficiency_length(four_mine, four_base, trusted=set()).length == 4  # two each side
    three = efficiency_length({1: 2.0, 2: 2.0, 4: 1.0}, {1: 1.0, 2: 1.0, 4: 2.0}, trusted=set())
    assert three.length is None and "untrusted" in three.text
    twice = efficiency_length({1: 1.0, 2: 3.0, 4: 1.0, 8: 1.0}, {1: 2.0, 2: 2.0, 4: 2.0, 8: 2.0})
    assert twice.length is None and "more than once" in twice.text
    assert efficiency_length({1: 1.0, 2: 1.0}, {1: 2.0, 2: 2.0}).text.startswith(
        "below the baseline at every"
    )
    assert (
        efficiency_length({1: 3.0, 2: 3.0}, {1: 2.0, 2: 2.0}).text
        == "never below the baseline (T ≤ 2)"
    )


def test_efficiency_lengths_in_the_table(user: Report, sound: tuple[Store, Report]) -> None:
    (linear, _) = cells_of(user.page(CAUSAL), "scaling-tokens-causal-self")
    assert text(linear[8]).startswith("— (crosses between 64 and 128")  # one repeat each: none
    rows = {
        (text(r[0]), text(r[1])): r
        for r in cells_of(sound[1].page(CAUSAL), "scaling-tokens-causal-self")
    }
    lin = rows[("linear", "fast")]
    assert text(lin[8]).startswith("— (crosses between 1024 and 4096")  # its 1024 point is noisy
    assert text(lin[9]) == "1024 (above at 256; below at 1024, 4096)"  # memory is deterministic
    assert text(rows[("softmax", "fast")][8]) == "baseline"


# ---- GEMM fraction ---------------------------------------------------------------------------
def test_gemm_fraction_above_one_is_a_measurement_error(user: Report, tmp_path: Path) -> None:
    rows = {text(r[0]): r for r in cells_of(user.page(CAUSAL), "gemm-tokens-causal-self")}
    flagged = rows["linear"][-1]
    assert "measurement error" in flagged and "not a result" in flagged
    assert not re.fullmatch(r"~?2\.36\d*", text(flagged))  # never the bare number
    assert text(rows["softmax"][-1]).startswith("~0.200")  # a result, but of one repeat
    assert "GEMM fractions flagged as measurement errors: 1" in user.page("index.html")
    store = Store(tmp_path / "p.duckdb")
    speed_run(store, [speed_row("linear", 64, 1.0)])
    peer_run(store, [peer_row("fast", gemm_fraction=1.7), peer_row("slow", gemm_fraction=0.4)])
    peers = {text(r[0]): r for r in cells_of(build_report(store).page("peers.html"), "peers-table")}
    assert "measurement error" in peers["fast"][12] and "1.7" not in text(peers["fast"][12])
    assert text(peers["slow"][12]) == "0.400"


# ---- noisy and few-repeat timings --------------------------------------------------------------
def test_noisy_and_few_repeat_rows_are_marked(sound: tuple[Store, Report], user: Report) -> None:
    page = sound[1].page(CAUSAL)
    rows = cells_of(page, "all-tokens-causal-self")
    marked = {(text(r[1]), text(r[5])): r for r in rows}
    noisy = marked[("linear", "1024")]
    assert text(noisy[6]).startswith("~16.000") and "badge noisy" in noisy[6]
    assert text(noisy[9]) == "noisy" and text(noisy[8]) == "60"
    assert text(marked[("linear", "256")][9]) == "ok" and "~" not in text(
        marked[("linear", "256")][6]
    )
    assert (
        "hollow: noisy or few repeats" in page and "fill: #ffffff" in svgs(page)[0]
    )  # the latency plot
    few = cells_of(user.page(CAUSAL), "all-tokens-causal-self")
    assert all(text(r[9]) == "few repeats" and text(r[6]).startswith("~") for r in few)
    assert "Reading the numbers" in page  # the badges' legend


def test_rows_without_quartiles_say_so(tmp_path: Path) -> None:
    old = speed_row("softmax", 64, 1.0, spread=None)
    assert timing_trust(old) == "spread not recorded"
    assert timing_trust(speed_row("softmax", 64, 1.0, repeats=2)) == "few repeats"
    assert timing_trust(speed_row("softmax", 64, 1.0, spread=0.3)) == "noisy"
    assert timing_trust(speed_row("softmax", 64, 1.0, spread=0.2)) == "ok"


# ---- peers -------------------------------------------------------------------------------------
def test_noisy_peers_are_unreliable(tmp_path: Path) -> None:
    assert peer_trust(peer_row("a"))[0] == "ok"
    assert peer_trust(peer_row("a", ours=0.5)) == ("unreliable", "ours spread 50% (> 25%)")
    assert peer_trust(peer_row("a", peer=0.4))[0] == "unreliable"
    assert peer_trust(peer_row("a", repeats=1))[0] == "unreliable"
    assert peer_trust(peer_row("a", ours=None, peer=None))[0] == "spread not recorded"
    assert peer_trust(peer_row("a"), busy=True)[0] == "unreliable"
    store = Store(tmp_path / "p.duckdb")
    speed_run(store, [speed_row("linear", 64, 1.0)])
    peer_run(
        store, [peer_row("ok"), peer_row("noisy", ours=0.5), peer_row("old", ours=None, peer=None)]
    )
    page = build_report(store).page("peers.html")
    rows = {text(r[0]): r for r in cells_of(page, "peers-table")}
    assert text(rows["ok"][9]) == "2.00x" and text(rows["ok"][10]) == "ok"
    assert text(rows["noisy"][9]) == "~2.00x" and text(rows["noisy"][10]) == "unreliable"
    assert text(rows["old"][10]) == "spread not recorded" and text(rows["old"][5]) == "not recorded"
    busy_store = Store(tmp_path / "b.duckdb")
    speed_run(busy_store, [speed_row("linear", 64, 1.0)])
    peer_run(busy_store, [peer_row("ok")], machine=BUSY)
    busy = build_report(busy_store)
    (row,) = cells_of(busy.page("peers.html"), "peers-table")
    assert text(row[10]) == "unreliable" and "machine was busy" in busy.page("peers.html")


# ---- the top of the report ---------------------------------------------------------------------
def test_top_counts_noise_and_lists_machine_load_and_interrupted_runs(tmp_path: Path) -> None:
    store = Store(tmp_path / "w.duckdb")
    rows = [speed_row("softmax", 64, 1.0), speed_row("softmax", 128, 2.0, spread=0.5),
            speed_row("linear", 64, 1.0, repeats=1), speed_row("linear", 128, 1.0)]  # fmt: skip
    run = speed_run(store, rows, machine=BUSY, status="interrupted")
    store.add_note(run, "prediction-wrong", "skipped T=4096 predicted 30 s; 128 took 0.1 s")
    top = build_report(store).page("index.html")
    glance = top[top.index('id="trust"') : top.index('id="advice"')]
    assert re.search(
        r"4 timings: <b>2 ok</b>, 1 <span[^>]*>noisy</span>, 1 <span[^>]*>few repeats", glance
    )
    assert f"run {run} interrupted: stopped by the user (Ctrl-C)" in glance
    assert "not quiet at the start: load average 3.5 on 2 CPUs busy: PID 4242 stress 97%" in glance
    assert "(prediction-wrong): skipped T=4096 predicted 30 s" in glance
    runs_page = build_report(store).page("runs.html")
    assert "busy at start" in runs_page and "prediction-wrong" in runs_page


def test_a_quiet_complete_run_says_so(sound: tuple[Store, Report]) -> None:
    top = sound[1].page("index.html")
    assert "No run was interrupted and no run noted a busy machine" in top
    assert "15 timings: <b>14 ok</b>" in top


# ---- colours -----------------------------------------------------------------------------------
def test_a_mechanism_has_one_colour_and_marker_in_every_plot(sound: tuple[Store, Report]) -> None:
    _, report = sound
    a = Palette(["softmax", "linear", "area"], {"area": "grid2d"})
    b = Palette(["area", "softmax", "linear", "area"], {"area": "grid2d"})
    assert [a.style(n) for n in ("area", "linear", "softmax")] == [
        b.style(n) for n in ("area", "linear", "softmax")
    ]
    many = Palette(map(str, range(72)))
    assert len({(s.color, s.marker) for s in map(many.style, map(str, range(72)))}) == 72
    # by layout, sorted: tokens linear 0, softmax 1; grid2d area 0. softmax keeps slot 1 on the
    # page where it is the only mechanism, and on every other page
    linear, softmax, area = COLORS[0].lower(), COLORS[1].lower(), COLORS[0].lower()
    both = svgs(report.page(CAUSAL))[:2]  # latency and memory, forward
    alone = svgs(report.page("speed-tokens-noncausal-cross.html"))[:2]
    grid = svgs(report.page("speed-grid2d-noncausal-self.html"))[:2]
    for svg in both:
        assert linear in svg and softmax in svg
    for svg in alone:
        assert softmax in svg and linear not in svg
    for svg in grid:
        assert area in svg and softmax not in svg
    swatch = f'<span class="swatch" style="background:{COLORS[1]}"'
    assert swatch in report.page("index.html") and swatch in report.page(CAUSAL)


def ranked(cell: str) -> list[str]:
    return [text(li) for li in re.findall(r"<li>(.*?)</li>", cell.split("<details")[0], flags=re.S)]


def test_summary_answers_which_mechanism_to_use(sound: tuple[Store, Report]) -> None:
    store, report = sound
    top = report.page("index.html")
    assert top.index('id="advice"') < top.index('id="contents"')
    rows = cells_of(top, "summary-table")
    assert [text(r[0]) for r in rows] == [
        "tokens · causal-self", "tokens · noncausal-cross", "grid2d · noncausal-self"
    ]  # fmt: skip
    causal = rows[0]
    assert f'href="{CAUSAL}"' in causal[0]
    assert text(causal[1]).startswith("T = 4096") and text(causal[2]).startswith("T = 256")
    longest, shortest = ranked(causal[1]), ranked(causal[2])
    assert longest[0] == "linear/fast 64 ms [62.7–65.3] n=5, 3.91 MiB"  # with its evidence
    assert [r.split("/")[0] for r in longest] == ["linear", "softmax"]
    assert [r.split("/")[0] for r in shortest] == ["softmax", "linear"]
    assert text(causal[3]) == "not measured"  # no training timings
    assert ranked(rows[1][1])[0].startswith("softmax/fast")
    assert ranked(rows[2][1])[0].startswith("area/fast")


def test_summary_asks_recommend_and_shows_its_refusals(tmp_path: Path) -> None:
    store, run = sound_store(tmp_path / "s.duckdb")
    calls: list[dict[str, Any]] = []

    def refuse(store: Store, **kw: Any) -> Any:
        calls.append(kw)
        raise ValueError(f"recommend: nothing for {kw['layout']} {kw['pattern']}")

    top = build_report(store, recommend=refuse).page("index.html")
    assert {(c["layout"], c["pattern"], c["seq_len"], c["train"]) for c in calls} == {
        (lay, p, T, False) for lay, p in (("tokens", "causal-self"), ("tokens", "noncausal-cross"),
                                          ("grid2d", "noncausal-self")) for T in (256, 4096)
    }  # fmt: skip
    assert all(c["run_ids"] == [run] for c in calls)
    assert "recommend: nothing for grid2d noncausal-self" in top


def test_training_is_asked_where_measured(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.duckdb")
    rows = [speed_row(m, T, T / 64 * (1 if m == "softmax" else 2) * (3 if mode == "fwdbwd" else 1),
                      mode=mode)
            for m in ("softmax", "linear") for T in (64, 256) for mode in ("fwd", "fwdbwd")]  # fmt: skip
    speed_run(store, rows, specs=SPECS)
    (row,) = cells_of(build_report(store).page("index.html"), "summary-table")
    assert [re.findall(r'<div class="q">T = (\d+)</div>', c) for c in row[1:]] == [
        ["256"],
        ["64"],
        ["256"],
    ]
    assert ranked(row[1])[0].startswith("softmax/fast 4 ms")
    assert ranked(row[3])[0].startswith("softmax/fast 12 ms")  # training: the fwdbwd timings


def test_quality_plots_use_the_report_colours(tmp_path: Path) -> None:
    from tests.report.test_quality_report import build_quality_store

    store, ids = build_quality_store(tmp_path / "q.duckdb")
    report = build_report(store)
    # the store knows gla, linear, lla, softmax: lla is slot 2 and softmax slot 3 in every plot,
    # also in the regression task that trains only those two
    lla, softmax = COLORS[2].lower(), COLORS[3].lower()
    page = report.page("quality.html")
    reg = page[page.index(f'id="quality-{ids["regression"]}-regression"') :]
    reg = reg[: reg.index("<h3")]  # up to the next run
    figures = svgs(reg)
    assert len(figures) == 4  # width, state size, learning curves, latency (softmax only)
    assert all(lla in s and softmax in s for s in figures[:3]) and softmax in figures[3]
    assert all(COLORS[0].lower() not in s and COLORS[1].lower() not in s for s in figures)
    speed = svgs(report.page(CAUSAL))[0]
    assert softmax in speed  # the same colour on the speed page


def test_a_store_before_quartiles_reads_as_spread_not_recorded(tmp_path: Path) -> None:
    """A v7 store (no quartiles, machine state or notes) opened read-only, as `attnzoo report`
    opens it: its timings are neither ok nor called noisy."""
    import duckdb

    from attnzoo.store.schema import MIGRATIONS

    path = tmp_path / "v7.duckdb"
    con = duckdb.connect(str(path))
    for _, _, statements in MIGRATIONS[:7]:
        for sql in statements:
            con.execute(sql)
    con.execute("INSERT INTO attnzoo_meta VALUES ('app', 'attnzoo-store'), ('schema_version', '7')")
    con.execute("INSERT INTO runs (kind, suite, status, started_at, env, config) VALUES "
                "('speed', 'quick', 'complete', now(), '{}', '{\"baseline\": \"softmax\"}')")  # fmt: skip
    for mixer, T, ms in (("softmax", 64, 1.0), ("softmax", 256, 16.0), ("softmax", 1024, 256.0),
                         ("linear", 64, 2.0), ("linear", 256, 8.0), ("linear", 1024, 32.0)):  # fmt: skip
        con.execute(
            "INSERT INTO speed (run_id, mixer, impl, pattern, mask, mode, batch, seq_len, ctx_len, "
            "d_model, heads, head_dim, repeats, median_s, min_s, peak_bytes, flops, gflops_per_s, "
            "gemm_fraction, recorded_at) VALUES (1, ?, 'fast', 'causal-self', 'causal', 'fwd', 1, "
            "?, ?, 64, 2, 32, 5, ?, ?, 1000, 1000000, 1.0, 0.1, now())",
            [mixer, T, T, ms / 1e3, ms / 1e3],
        )
    con.close()
    report = build_report(Store(path, read_only=True))
    page = report.page(CAUSAL)
    labels = {text(r[9]) for r in cells_of(page, "all-tokens-causal-self")}
    assert labels == {"spread not recorded"}
    assert "6 timings: <b>0 ok</b>, 0 " in report.page("index.html")
    rows = {text(r[0]): r for r in cells_of(page, "scaling-tokens-causal-self")}
    assert text(rows["softmax"][6]).startswith("~2.00 (95% CI")  # given, but marked
    # crossing between 64 and 256 with one untrusted length before it: no efficiency length
    assert text(rows["linear"][8]).startswith("— (crosses between 64 and 256")
