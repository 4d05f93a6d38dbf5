"""``attnzoo recommend``: the measured mechanisms ranked for a length, pattern, memory budget and
task, with the evidence of every rank (:mod:`attnzoo.recommend` holds the rules)."""

from __future__ import annotations

import csv
import json
import sys
from typing import Annotated

import typer

from attnzoo.cli_common import DbOption, WaitOption, check_choice, fail, open_store, out
from attnzoo.cli_tables import grid, show
from attnzoo.recommend import Candidate, Recommendation, recommend
from attnzoo.text import fmt_bytes

FORMATS = ("table", "csv", "json")
# the library's argument names as this command spells them
FLAGS = {"seq_len": "--seq-len", "pattern": "--pattern", "memory": "--memory",
         "layout": "--layout", "run_ids": "--run", "task": "--task"}  # fmt: skip
TRUST_STYLE = {"ok": "green", "noisy": "yellow", "few repeats": "yellow"}


def recommend_cmd(
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per sequence (grids: h*w).")],
    pattern: Annotated[
        str, typer.Option(help="causal-self, noncausal-self, causal-cross or noncausal-cross.")
    ],
    memory: Annotated[
        str | None, typer.Option(help="Peak memory budget, e.g. 1GiB (default: none).")
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="Rank by quality on this stored task, e.g. mqar.")
    ] = None,
    train: Annotated[
        bool, typer.Option("--train", help="Forward+backward times (default: forward).")
    ] = False,
    layout: Annotated[str, typer.Option(help="tokens, grid2d or grid3d.")] = "tokens",
    db: DbOption = None,
    wait: WaitOption = 10.0,
    run: Annotated[
        list[int] | None,
        typer.Option("--run", help="Speed/quality run id(s) to read; repeat. Default: all."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
) -> None:
    """Which mechanism to use: the measured ones ranked for a length, pattern, memory budget and
    task, with the run, repeats, spread and length every rank stands on."""
    from attnzoo.cli import parse_size  # here: attnzoo.cli imports this module

    check_choice("--format", fmt, FORMATS)
    budget = parse_size("--memory", memory) if memory is not None else None
    store = open_store(db, read_only=True, wait=wait)
    try:
        rec = recommend(store, seq_len=seq_len, pattern=pattern, memory=budget, task=task,
                        train=train, layout=layout, run_ids=run)  # fmt: skip
    except ValueError as e:
        raise fail(_flagged(str(e).removeprefix("recommend: "))) from None
    if fmt == "json":
        print(json.dumps({"request": rec.request, "ranked": rec.table_rows(),
                          "excluded": [{"mixer": m, "reason": r} for m, r in rec.excluded],
                          "warnings": rec.warnings, "suggestion": rec.suggestion}, indent=1))  # fmt: skip
        return
    if fmt == "csv":
        rows = rec.table_rows()
        if rows:
            w = csv.writer(sys.stdout)
            w.writerow(list(rows[0]))
            w.writerows([list(r.values()) for r in rows])
        for line in _tail(rec):
            typer.echo(line, err=True)
        return
    _print_table(rec)


def _flagged(message: str) -> str:
    """``message`` with the argument it starts with named as its option."""
    arg, sep, rest = message.partition(" ")
    name = arg.rstrip(":")
    return FLAGS[name] + arg[len(name) :] + sep + rest if name in FLAGS else message


def _print_table(rec: Recommendation) -> None:
    req = rec.request
    title = f"recommend for T={req['seq_len']} {req['pattern']} {req['mode']} ({req['layout']})"
    if req["memory"] is not None:
        title += f", peak <= {fmt_bytes(req['memory'])}"
    if req["task"] is not None:
        title += f", by {req['task']} quality"
    numbers = ["#", "T used", "ms", "q1..q3 ms", "reps", "spread", "peak", "run"]
    header = ["#", "mixer", "impl", "T used", "ms", "q1..q3 ms", "reps", "spread", "trust",
              "peak", "fits", *(["quality"] if req["task"] else []), "run"]  # fmt: skip
    cells = [_cells(i, c, req) for i, c in enumerate(rec.ranked, 1)]
    if rec.ranked:
        show(out, grid(title, header, cells, right=numbers, keep=("trust", "fits")))
        out.print("evidence:", highlight=False)
        for i, c in enumerate(rec.ranked, 1):
            said = "; ".join(filter(None, (c.note, c.memory_note, c.quality_note)))
            out.print(f"  {i}. {c.mixer}/{c.impl}: {said or 'measured at the request'}",
                      highlight=False, soft_wrap=True)  # fmt: skip
    else:
        out.print(f"{title}: nothing to rank", highlight=False)
    for line in _tail(rec):
        out.print(line, highlight=False, soft_wrap=True, markup=False)


def _cells(i: int, c: Candidate, req: dict) -> list[str]:
    spread = "-" if c.spread is None else f"{c.spread:.0%}"
    iqr = "-" if c.q1_s is None or c.q3_s is None else f"{c.q1_s * 1e3:.3g}..{c.q3_s * 1e3:.3g}"
    t_used = f"{c.seq_len} extrap." if c.extrapolated else str(c.seq_len)
    fits = "-" if req["memory"] is None else {True: "yes", False: "NO", None: "?"}[c.fits_memory]
    quality = ["-" if c.quality is None else f"{c.quality:.4g}"] if req["task"] else []
    style = TRUST_STYLE.get(c.trust, "yellow")
    return [str(i), c.mixer, c.impl, t_used, f"{c.median_s * 1e3:.4g}", iqr, str(c.repeats),
            spread, f"[{style}]{c.trust}[/]", fmt_bytes(c.peak_bytes), fits, *quality,
            str(c.run_id)]  # fmt: skip


def _tail(rec: Recommendation) -> list[str]:
    """Excluded mechanisms, warnings and the suggested command, one line each."""
    lines = [f"excluded {m}: {why}" for m, why in rec.excluded]
    lines += [f"warning: {w}" for w in rec.warnings]
    if rec.suggestion:
        lines.append(f"to measure what is missing: {rec.suggestion}")
    return lines


def register(app: typer.Typer) -> None:
    """Add ``recommend`` to ``app``."""
    app.command("recommend")(recommend_cmd)
