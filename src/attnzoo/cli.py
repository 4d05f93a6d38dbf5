"""The ``attnzoo`` command line: thin parsing over the public API."""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import attnzoo as az
from attnzoo.bench.gate import check_mixer
from attnzoo.bench.peers import PeerPlan, fmt_ratio, run_peers
from attnzoo.bench.quality import SUITES as QUALITY_SUITES
from attnzoo.bench.quality import check_suite, run_quality
from attnzoo.bench.speed import run_speed
from attnzoo.bench.speed_suites import SUITES
from attnzoo.cli_common import EXIT_CODES, DbOption, WaitOption, err, guard_commands, out
from attnzoo.cli_common import check_choice as _check_choice
from attnzoo.cli_common import fail as _fail
from attnzoo.cli_common import open_store as _open_store
from attnzoo.cli_recommend import register as register_recommend
from attnzoo.cli_store import store_app
from attnzoo.cli_summary import (
    RESULTS_KEYS,
    JsonOption,
    bench_exits,
    bench_summary,
    pick,
    print_json,
)
from attnzoo.cli_tables import grid, mechanism_table, show
from attnzoo.config import suggest
from attnzoo.report import cp_case_rows, quality_point, write_report
from attnzoo.store import Store

app = typer.Typer(
    no_args_is_help=True,
    help="attnzoo: attention and token-mixing mechanisms behind one interface.",
    epilog=EXIT_CODES,
)


def _version(value: bool) -> None:
    if value:
        out.print(f"attnzoo {az.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """attnzoo: attention and token-mixing mechanisms behind one interface."""


@app.command("list")
def list_cmd(
    layout: Annotated[
        str | None, typer.Option(help="tokens [B, T, D], grid2d [B, h, w, C] or grid3d.")
    ] = None,
    role: Annotated[str | None, typer.Option(help="mixer, fusion or pooling.")] = None,
    dims: Annotated[
        int | None, typer.Option(help="The first version's --layout: 1, 2 or 3.", hidden=True)
    ] = None,
    pattern: Annotated[str | None, typer.Option(help="One of the four CAB patterns.")] = None,
    family: Annotated[str | None, typer.Option(help="Mechanism family.")] = None,
    state: Annotated[str | None, typer.Option(help="none, constant or growing.")] = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the README feature table.")
    ] = False,
) -> None:
    """List registered mechanisms with family, layout, role, patterns, state and paper year."""
    _check_choice("--layout", layout, tuple(az.LAYOUTS))
    _check_choice("--role", role, tuple(az.ROLES))
    _check_choice("--dims", dims, (1, 2, 3))
    _check_choice("--pattern", pattern, az.PATTERNS)
    _check_choice("--family", family, az.FAMILIES)
    _check_choice("--state", state, az.STATES)
    if markdown:
        from attnzoo.readme_table import feature_table

        print(feature_table())
        return
    specs = az.list_mixers(
        layout=layout, role=role, dims=dims, pattern=pattern, family=family, state=state
    )
    show(out, mechanism_table(specs, width=out.width))


@app.command()
def info(name: Annotated[str, typer.Argument(help="Registered mechanism name.")]) -> None:
    """Show one mechanism's spec: paper, complexity, patterns, the masks each pattern takes,
    and every config key (type, limits, default, description)."""
    try:
        spec = az.get_spec(name)
    except ValueError as e:
        raise _fail(str(e)) from None
    rows = {
        "family": spec.family,
        "layout": f"{spec.layout} {az.LAYOUTS[spec.layout].shape}",
        "role": f"{spec.role} ({az.ROLES[spec.role].signature})",
        "context": "-"
        if spec.context_layout is None
        else f"{spec.context_layout} {az.LAYOUTS[spec.context_layout].shape}",
        "patterns": ", ".join(spec.patterns),
        **{f"masks ({p})": ", ".join(spec.masks_for(p)) for p in spec.patterns},
        "state": spec.state,
        "exact softmax": "yes" if spec.exact else "no",
        "attention maps": "yes" if spec.attention_maps else "no",
        "complexity": spec.complexity,
        "paper": f"{spec.paper.title} ({spec.paper.year})",
        "url": spec.paper.url,
        "code": spec.paper.code or "-",
        "verified against": spec.peer,
        "impls": ", ".join(spec.impls) or "-",
    }
    cells = [[k, escape(v)] for k, v in rows.items()]
    show(out, grid(spec.name, ["field", "value"], cells, keep={"field"}))
    keys = [
        [f.name, escape(f.type + (f" ({f.limits})" if f.limits else "")), escape(f.default),
         escape(f.description)]
        for f in spec.config.describe()
    ]  # fmt: skip
    show(out, grid(f"{spec.name}: config keys", ["key", "type", "default", "description"], keys,
                   keep={"key"}))  # fmt: skip


@app.command()
def selfcheck(
    length: Annotated[
        int, typer.Option(help="Tokens of the check (token blocks; grids use 11x13, 3x5x6).")
    ] = 77,
    d_model: Annotated[int, typer.Option(help="Model width of the check.")] = 32,
) -> None:
    """Check every fast path of every mechanism against its reference (forward + backward)."""
    if length < 1 or d_model < 1:
        raise _fail(f"--length and --d-model must be >= 1, got {length} and {d_model}")
    specs = az.list_mixers()
    results = []
    start = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("selfcheck", total=len(specs))
        for spec in specs:
            bar.update(task, description=f"selfcheck {spec.name}")
            results += check_mixer(spec, d_model=d_model, length=length)
            bar.advance(task)
    rows = [
        [r.mixer, r.impl, r.pattern, f"{r.max_abs_err:.1e}",
         "[green]ok[/]" if r.ok else f"[red]FAIL[/] {r.detail}"]
        for r in results
    ]  # fmt: skip
    title = f"fast path vs reference, fwd+bwd, fp32, T={length}, grids 11x13 and 3x5x6"
    show(out, grid(title, ["mixer", "impl", "pattern", "max |err|", "result"], rows,
                   right={"max |err|"}))  # fmt: skip
    failed = [r for r in results if not r.ok]
    out.print(
        f"selfcheck: {len(results) - len(failed)} ok, {len(failed)} failing ({time.perf_counter() - start:.1f} s)"
    )
    if failed:
        raise typer.Exit(code=1)


# ---- bench / store / report ----------------------------------------------------------------
bench_app = typer.Typer(no_args_is_help=True, help="Measure mechanisms into the store.")
app.add_typer(bench_app, name="bench")


ConcurrentOption = Annotated[
    bool,
    typer.Option(
        "--allow-concurrent",
        help="Start even while another bench runs on this store (both timings suffer).",
    ),
]
BENCH_WAIT = 600.0  # seconds a running bench waits for a store another process holds


def _bench_store(db: Path | None, wait: float, allow_concurrent: bool) -> Store:
    """The store a bench writes: opened (and read through) before anything is measured, and
    refused while another bench runs on it unless ``allow_concurrent``. Once running, a write
    waits up to ``max(wait, BENCH_WAIT)`` seconds for a store another process holds."""
    store = _open_store(db, wait=wait)
    if not allow_concurrent:
        store.check_idle()  # RunInProgressError: one line through the command guard
    store.wait = max(wait, BENCH_WAIT)
    return store


def _items(arg: str, text: str, expected: str) -> list[str]:
    """The comma-separated items of ``text``; an empty one (``64,,128``, a trailing comma) or
    none at all fails naming ``arg``, the value and ``expected``."""
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        where = "no value" if not text.strip() else f"empty item {items.index('') + 1}"
        raise _fail(f"{arg}: expected {expected}, got {text!r} ({where})")
    return items


def _ints(arg: str, text: str | None, minimum: int = 1) -> tuple[int, ...] | None:
    """Comma-separated integers ``>= minimum`` (positive unless said otherwise)."""
    if text is None:
        return None
    expected = (
        "comma-separated positive integers such as 256,1024,4096"
        if minimum == 1
        else f"comma-separated integers >= {minimum} such as {minimum},{minimum + 1},{minimum + 2}"
    )
    items = _items(arg, text, expected)
    try:
        values = tuple(int(t) for t in items)
    except ValueError:
        raise _fail(f"{arg}: expected {expected}, got {text!r}") from None
    if any(v < minimum for v in values):
        raise _fail(f"{arg}: expected {expected}, got {text!r}")
    return values


def _floats(arg: str, text: str, example: str) -> tuple[float, ...]:
    """Comma-separated finite numbers (``1e-3``, ``0.003``)."""
    expected = f"comma-separated numbers such as {example}"
    try:
        values = tuple(float(t) for t in _items(arg, text, expected))
    except ValueError:
        raise _fail(f"{arg}: expected {expected}, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise _fail(f"{arg}: expected {expected} (finite), got {text!r}")
    return values


def _words(text: str | None, arg: str = "") -> tuple[str, ...] | None:
    """Comma-separated names; ``''`` is none at all (``--masks ''``), but an empty item between
    names (``a,,b``, a trailing comma) is refused, naming ``arg``."""
    if text is None:
        return None
    if not text.strip():
        return ()
    items = tuple(t.strip() for t in text.split(","))
    if "" in items:
        where = f"{arg}: " if arg else ""
        raise _fail(
            f"{where}expected comma-separated names such as a,b, got {text!r} "
            f"(empty item {items.index('') + 1})"
        )
    return items


def parse_size(arg: str, text: str) -> int:
    """``4GiB``, ``512MiB``, ``2G``, ``1e9`` or a plain byte count."""
    units = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 1000, "m": 1 << 20, "mib": 1 << 20,
             "mb": 10**6, "g": 1 << 30, "gib": 1 << 30, "gb": 10**9, "t": 1 << 40, "tib": 1 << 40}  # fmt: skip
    t = text.strip().lower()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(num) :]
    try:
        value = float(num) * units[unit]
    except (ValueError, KeyError):
        raise _fail(
            f"{arg}: expected a size such as 4GiB, 512MiB or 2000000000, got {text!r}"
        ) from None
    if value <= 0:
        raise _fail(f"{arg}: expected a positive size, got {text!r}")
    return int(value)


@bench_app.command("speed")
def bench_speed(
    suite: Annotated[str, typer.Option(help="quick (minutes) or full (long sequences).")] = "quick",
    mixers: Annotated[
        str | None, typer.Option(help="Comma-separated mechanisms (default: all).")
    ] = None,
    seq_lens: Annotated[
        str | None, typer.Option("--seq-lens", help="Comma-separated lengths, e.g. 256,1024,4096.")
    ] = None,
    image_sizes: Annotated[
        str | None,
        typer.Option(
            "--image-sizes", help="Grid sides for grid blocks, e.g. 32,64,128 (h = w [= d])."
        ),
    ] = None,
    patterns: Annotated[
        str | None, typer.Option(help="Comma-separated CAB patterns (default: all).")
    ] = None,
    masks: Annotated[
        str | None,
        typer.Option(help="Extra mask kinds for self patterns, e.g. sliding-window,document."),
    ] = None,
    batch: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    heads: Annotated[
        int | None, typer.Option(help="Attention heads (d_model = heads * head_dim).")
    ] = None,
    head_dim: Annotated[int | None, typer.Option("--head-dim", help="Per-head width.")] = None,
    mode: Annotated[str | None, typer.Option(help="fwd, fwdbwd, step (comma-separated).")] = None,
    repeats: Annotated[
        int | None, typer.Option(help="Timed calls per measurement (median).")
    ] = None,
    warmup: Annotated[int | None, typer.Option(help="Untimed warm-up calls.")] = None,
    memory_budget: Annotated[
        str | None,
        typer.Option("--memory-budget", help="Skip work predicted above this, e.g. 4GiB."),
    ] = None,
    time_cap: Annotated[
        float | None,
        typer.Option("--time-cap", help="Skip a measurement predicted to take longer (s)."),
    ] = None,
    no_skip: Annotated[
        bool,
        typer.Option(
            "--no-skip",
            help="Measure every length: no prediction against --memory-budget / --time-cap.",
        ),
    ] = False,
    skip_impls: Annotated[
        str | None,
        typer.Option(
            "--skip-impls",
            help="Impls not timed (still checked), e.g. reference,recurrent; '' times all.",
        ),
    ] = None,
    db: DbOption = None,
    wait: WaitOption = 10.0,
    allow_concurrent: ConcurrentOption = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Latency, peak memory and FLOP rate of every (mechanism, impl, pattern, mask, length)."""
    if suite not in SUITES:
        raise _fail(
            f"--suite must be one of {', '.join(SUITES)}, got {suite!r}{suggest(suite, SUITES)}"
        )
    changes: dict = {}
    lengths = _ints("--seq-lens", seq_lens)
    for key, value in (
        ("mixers", _words(mixers, "--mixers")), ("seq_lens", lengths), ("patterns", _words(patterns, "--patterns")),
        ("image_sizes", _ints("--image-sizes", image_sizes)),
        ("masks", _words(masks, "--masks")), ("batch", batch), ("heads", heads), ("head_dim", head_dim),
        ("modes", _words(mode, "--mode")), ("repeats", repeats), ("warmup", warmup), ("time_cap", time_cap),
        ("skip_impls", _words(skip_impls, "--skip-impls")),
        ("memory_budget", parse_size("--memory-budget", memory_budget) if memory_budget else None),
    ):  # fmt: skip
        if value is not None:
            changes[key] = value
    if no_skip:
        changes["no_skip"] = True
    changes["explicit_mixers"] = mixers is not None
    changes["explicit_patterns"] = patterns is not None
    try:
        plan_ = SUITES[suite].replace(**changes)
    except ValueError as e:
        raise _fail(str(e)) from None
    store = _bench_store(db, wait, allow_concurrent)
    command = "attnzoo " + " ".join(sys.argv[1:])
    with bench_exits(store, "speed", as_json):
        run_id = run_speed(plan_, store, allow_concurrent=allow_concurrent, command=command,
                           console=err, progress=progress)  # fmt: skip
    if as_json:
        return print_json(bench_summary(store, "speed", run_id))
    n, skipped = len(store.speed([run_id])), store.skips([run_id])
    failed = sum(1 for s in skipped if s["kind"] == "failed")
    out.print(
        f"run {run_id}: {n} measurements, {len(skipped) - failed} skipped, {failed} failed -> {store.path}"
    )


@bench_app.command("peers")
def bench_peers(
    suite: Annotated[
        str, typer.Option(help="quick (minutes) or full (the issues' sizes).")
    ] = "quick",
    cases: Annotated[
        str | None, typer.Option(help="Comma-separated peer cases (default: all; see --list).")
    ] = None,
    sizes: Annotated[
        str | None, typer.Option(help="Comma-separated sizes (T, or image side) for every case.")
    ] = None,
    repeats: Annotated[int, typer.Option(help="Timed calls per side (median).")] = 5,
    memory: Annotated[bool, typer.Option(help="Also record each side's peak memory.")] = True,
    list_: Annotated[bool, typer.Option("--list", help="List the peer cases and exit.")] = False,
    db: DbOption = None,
    wait: WaitOption = 10.0,
    allow_concurrent: ConcurrentOption = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Ours vs a peer implementation of the same math (fla-core, timm): equal outputs, then
    interleaved timing in one run; stores peer time / our time (> 1: ours is faster)."""
    from attnzoo.bench.peers import get_cases

    if list_:
        for c in get_cases(None):
            miss = c.missing()
            state = f"needs {', '.join(miss)}" if miss else "ready"
            out.print(f"{c.name} ({c.mechanism} vs {c.peer}): {state}", soft_wrap=True)
        return
    try:
        plan = PeerPlan(name=suite if sizes is None else "custom", cases=_words(cases, "--cases"),
                        sizes=_ints("--sizes", sizes), repeats=repeats, memory=memory)  # fmt: skip
        if suite not in ("quick", "full"):
            raise ValueError(f"--suite must be quick or full, got {suite!r}")
        get_cases(plan.cases)
    except ValueError as e:
        raise _fail(str(e)) from None
    store = _bench_store(db, wait, allow_concurrent)
    command = "attnzoo " + " ".join(sys.argv[1:])
    with bench_exits(store, "peers", as_json):
        run_id = run_peers(plan, store, allow_concurrent=allow_concurrent, command=command,
                           console=err, progress=progress)  # fmt: skip
    if as_json:
        return print_json(bench_summary(store, "peers", run_id))
    rows = []
    for r in store.peers([run_id]):
        frac = "-" if r["gemm_fraction"] is None else f"{r['gemm_fraction']:.2f}"
        rows.append([r["case_name"], str(r["n"]), f"{r['ours_s'] * 1e3:.1f}",
                     f"{r['peer_s'] * 1e3:.1f}", fmt_ratio(r["ratio"]), frac,
                     f"{r['rel_diff']:.1e}", "yes" if r["ok"] else "NO"])  # fmt: skip
    numbers = ["n", "ours\nms", "peer\nms", "ratio", "GEMM\nfrac", "rel\ndiff"]
    title = f"run {run_id}: ours vs peers (ratio = peer time / our time)"
    show(out, grid(title, ["case", *numbers, "equal"], rows, right=numbers, keep={"equal"}))
    for s_ in store.skips([run_id]):
        err.print(f"{s_['kind']}: {s_['impl']} n={s_['seq_len']}: {s_['reason']}")


@bench_app.command("quality")
def bench_quality(
    suite: Annotated[
        str,
        typer.Option(
            help="quick (minutes), zoology (MQAR Figure-2 grid, hours), listops, pointer, "
            "images, regression."
        ),
    ] = "quick",
    task: Annotated[
        str | None,
        typer.Option(help="Comma-separated tasks, e.g. mqar (the suite's points of those tasks)."),
    ] = None,
    mixers: Annotated[str | None, typer.Option(help="Comma-separated mechanisms.")] = None,
    d_model: Annotated[
        str | None, typer.Option("--d-model", help="Comma-separated widths, e.g. 64,128.")
    ] = None,
    lrs: Annotated[
        str | None, typer.Option(help="Comma-separated learning rates (best-of).")
    ] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds.")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps per run at most.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Training batch size.")] = None,
    set_: Annotated[
        str | None,
        typer.Option(
            "--set",
            help="Task settings for every point, e.g. seq_len=256,"
            "num_kv_pairs=16,vocab_size=512 (identical points are merged).",
        ),
    ] = None,  # fmt: skip
    db: DbOption = None,
    wait: WaitOption = 10.0,
    allow_concurrent: ConcurrentOption = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    executor: Annotated[
        str,
        typer.Option(
            help="Where the grid points run: local (this process, one after another) or ray "
            "(Ray tasks in parallel, 1 CPU each; needs pip install 'attnzoo\\[ray]')."
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            help="With --executor ray: the cluster, e.g. auto (the running one) or HOST:PORT. "
            "Default: this machine's newest Ray instance, else a local one for the run.",
        ),
    ] = None,
    retries: Annotated[
        int,
        typer.Option(
            help="With --executor ray: attempts after the first for a grid point whose worker "
            "died (killed, out of memory); then its models are stored as failed.",
            min=0,
        ),
    ] = 1,
    as_json: JsonOption = False,
) -> None:
    """Train small models with each mechanism on seeded tasks; store curves and final metrics.

    Each grid point (task point, mechanism, width, seed; its learning-rate sweep) runs in this
    process, or with --executor ray as a Ray task; this process alone writes the store. A
    model whose training raised, or a point whose worker died, is stored as failed (status
    failed, a point-failed run note) and the run goes on.

    A Ray cluster shared by several runs: `ray start --head --num-cpus 2`, then
    `attnzoo bench quality --executor ray --ray-address auto ...`, and `ray stop` at the end.
    """
    from attnzoo.bench.executors import ExecutorError, RayExecutor
    from attnzoo.cli_common import EXIT_FAILURE
    from attnzoo.extras import MissingExtra

    _check_choice("--executor", executor, ("local", "ray"))
    if executor == "local" and ray_address is not None:
        raise _fail("--ray-address needs --executor ray")
    if suite not in QUALITY_SUITES:
        raise _fail(
            f"--suite must be one of {', '.join(QUALITY_SUITES)}, got {suite!r}"
            f"{suggest(suite, list(QUALITY_SUITES))}"
        )
    changes: dict = {}
    try:
        if mixers is not None:
            changes["mixers"] = _words(mixers, "--mixers")
        if d_model is not None:
            changes["d_models"] = _ints("--d-model", d_model)
        if seeds is not None:
            changes["seeds"] = _ints("--seeds", seeds, minimum=0)
        if lrs is not None:
            changes["lrs"] = _floats("--lrs", lrs, "1e-3,3e-3")
        if steps is not None:
            changes["steps"] = steps
        if batch_size is not None:
            changes["batch_size"] = batch_size
        plan = QUALITY_SUITES[suite].replace(**changes)
        if task is not None:
            plan = plan.select_tasks(_words(task, "--task") or ())
        if set_ is not None:
            plan = plan.with_settings(_settings(set_))
        check_suite(plan)
    except (TypeError, ValueError) as e:
        raise _fail(str(e)) from None
    try:  # a missing ray extra is said before anything runs
        runner = RayExecutor(ray_address, retries=retries) if executor == "ray" else None
    except MissingExtra as e:
        raise _fail(str(e), EXIT_FAILURE) from None
    store = _bench_store(db, wait, allow_concurrent)
    command = "attnzoo " + " ".join(sys.argv[1:])
    try:
        with bench_exits(store, "quality", as_json):
            run_id = run_quality(plan, store, allow_concurrent=allow_concurrent, command=command,
                                 console=err, progress=progress, executor=runner)  # fmt: skip
    except ExecutorError as e:
        raise _fail(str(e), EXIT_FAILURE) from None
    if as_json:
        return print_json(bench_summary(store, "quality", run_id))
    rows = []
    described = store.tasks([run_id])
    for r in store.quality([run_id], best_of_sweep=True):
        state = "-" if r["state_size"] is None else str(r["state_size"])
        rows.append([quality_point(r, described), r["mixer"], str(r["d_model"]),
                     f"{r['lr']:g}", str(r["seed"]), f"{r['best_metric']:.3f}",
                     str(r["steps_run"]), r["status"], state])  # fmt: skip
    numbers = ["d_model", "lr", "seed", "metric", "steps"]
    show(out, grid(f"run {run_id}: quality (best learning rate per group)",
                   ["task", "mixer", *numbers, "status", "state"], rows,
                   right={*numbers, "state"}))  # fmt: skip
    evals = store.quality_evals([run_id])
    if evals:
        rows = [[quality_point(e, described), e["mixer"], str(e["d_model"]),
                 f"{e['lr']:g}", str(e["seed"]), e["name"], f"{e['value']:.3f}"]
                for e in evals]  # fmt: skip
        show(out, grid(f"run {run_id}: extra evaluations of the final models",
                       ["task", "mixer", "d_model", "lr", "seed", "evaluation", "value"], rows,
                       right={"d_model", "lr", "seed", "value"}))  # fmt: skip
    models = store.quality([run_id])
    failed = [n["text"] for n in store.notes([run_id]) if n["kind"] == "point-failed"]
    if failed:
        count = sum(r["status"] == "failed" for r in models)
        err.print(f"run {run_id}: {count} of {len(models)} models failed (stored with status "
                  "failed; the report's runs page lists the notes):", highlight=False)  # fmt: skip
        for text in failed:
            err.print(f"  {text}", soft_wrap=True, highlight=False, markup=False)


@bench_app.command("cp")
def bench_cp(
    world_size: Annotated[
        str,
        typer.Option(help="Comma-separated world sizes (gloo workers spawned on this machine)."),
    ] = "1,2,4",  # fmt: skip
    strategy: Annotated[
        str | None, typer.Option(help="Comma-separated strategies (default: all; see --list).")
    ] = None,  # fmt: skip
    seq_lens: Annotated[str, typer.Option(help="Comma-separated global T.")] = "1024,4096",
    masks: Annotated[
        str, typer.Option(help="full, causal, sliding-window, document.")
    ] = "full,causal",
    mode: Annotated[str, typer.Option(help="fwd and/or fwd+bwd.")] = "fwd",
    heads: Annotated[int, typer.Option(help="Attention heads H.")] = 8,
    head_dim: Annotated[int, typer.Option(help="Head dim K = V.")] = 64,
    batch: Annotated[int, typer.Option(help="Batch size B.")] = 1,
    repeats: Annotated[int, typer.Option(help="Timed calls per case (median).")] = 3,
    timeout: Annotated[
        float, typer.Option(help="Seconds one strategy's workers may take.")
    ] = 1800.0,
    list_: Annotated[bool, typer.Option("--list", help="List the strategies and exit.")] = False,
    db: DbOption = None,
    wait: WaitOption = 10.0,
    allow_concurrent: ConcurrentOption = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    as_json: JsonOption = False,
) -> None:
    """Context parallelism: every strategy on a sharded sequence, exactness vs one process,
    latency, per-rank memory, compute and bytes (counted and analytic) into the store.

    Spawns its own gloo workers; under torchrun (e.g. ``torchrun --nproc-per-node 4 -m attnzoo
    bench cp``) the launched processes are the workers and rank 0 writes the store."""
    from attnzoo.bench.cp import CPPlan, get_strategies, run_cp

    if list_:
        for s_ in get_strategies():
            out.print(f"{s_.name}: {s_.description} (masks: {', '.join(s_.masks)})", soft_wrap=True)
        return
    try:
        plan = CPPlan(world_sizes=_ints("--world-size", world_size) or (), strategies=_words(strategy, "--strategy"),
                      masks=_words(masks, "--masks") or (), seq_lens=_ints("--seq-lens",
                      seq_lens) or (), modes=_words(mode, "--mode") or (), batch=batch, heads=heads,
                      head_dim=head_dim, repeats=repeats, timeout=timeout)  # fmt: skip
    except ValueError as e:
        raise _fail(str(e)) from None
    store = _bench_store(db, wait, allow_concurrent)
    with bench_exits(store, "cp", as_json):
        run_id = run_cp(plan, store, allow_concurrent=allow_concurrent, command="attnzoo " + " ".join(sys.argv[1:]), console=err,
                        progress=progress)  # fmt: skip
    if run_id is None:  # a torchrun rank > 0
        return
    if as_json:
        return print_json(bench_summary(store, "cp", run_id))
    numbers = ["T", "world", "ms", "peak MiB\n/rank", "sent KiB\n/rank", "analytic",
               "CPU\nspread", "max err"]  # fmt: skip
    show(out, grid(f"run {run_id}: context parallelism (per case: slowest rank, max over ranks)",
                   ["strategy", "mask", "T", "mode", *numbers[1:]], _cp_cases(store.cp([run_id])),
                   right=numbers))  # fmt: skip
    for s_ in store.cp_skips([run_id]):
        err.print(f"skipped {s_['strategy']} {s_['mask']} world {s_['world_size']}: {s_['reason']}")


def _cp_cases(rows: list[dict]) -> list[list[str]]:
    table = []
    for (name, mask, T, mode, w), c in cp_case_rows(rows):
        spread = "-" if c["cpu_spread"] is None else f"{c['cpu_spread']:.2f}x"
        err_ = "-" if c["max_abs_err"] is None else f"{c['max_abs_err']:.1e}"
        table.append([name, mask, str(T), mode, str(w), f"{c['latency_s'] * 1e3:.1f}",
                      f"{c['peak_bytes'] / 2**20:.1f}", f"{c['bytes_sent'] / 1024:.0f}",
                      "=" if c["bytes_equal"] else "DIFFERS", spread, err_])  # fmt: skip
    return table


def _settings(text: str) -> dict:
    """``key=value,...`` with JSON values (numbers, true/false, strings as they are)."""
    out: dict = {}
    for item in _words(text, "--set") or ():
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--set: expected key=value pairs such as seq_len=256, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


@app.command()
def report(
    db: DbOption = None,
    wait: WaitOption = 10.0,
    run: Annotated[
        list[int] | None,
        typer.Option("--run", help="Run id(s) to show; repeat to compare. Default: latest."),
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("report"),
) -> None:
    """Write a self-contained offline HTML report (report/index.html)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise _fail(
            f"--out {str(out_dir)!r} is a file; the report is a folder (it writes "
            "FOLDER/index.html): pass a folder, new or existing"
        )
    store = _open_store(db, read_only=True, wait=wait)
    try:
        path = write_report(store, out_dir, run)
    except ValueError as e:
        raise _fail(str(e)) from None
    except OSError as e:  # a parent that is a file, no permission, a full disk
        raise _fail(f"--out {str(out_dir)!r}: cannot write the report there: {e}") from None
    out.print(f"report written: {path.resolve()}")


@app.command()
def results(
    db: DbOption = None,
    wait: WaitOption = 10.0,
    run: Annotated[int | None, typer.Option(help="Run id (default: latest speed run).")] = None,
    mixer: Annotated[str | None, typer.Option(help="Only this mechanism.")] = None,
    pattern: Annotated[str | None, typer.Option(help="Only this pattern.")] = None,
    mode: Annotated[str | None, typer.Option(help="Only fwd, fwdbwd or step.")] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="table (CSV-like when stdout is not a terminal), csv or json."
        ),
    ] = "table",
) -> None:
    """Print stored speed results (filterable) as a table, CSV or JSON."""
    _check_choice("--format", fmt, ("table", "csv", "json"))
    _check_choice("--pattern", pattern, az.PATTERNS)
    _check_choice("--mode", mode, ("fwd", "fwdbwd", "step"))
    store = _open_store(db, read_only=True, wait=wait)
    run_id = run if run is not None else store.latest_run_id("speed")
    if run_id is None:
        raise _fail(f"{store.path} has no speed runs yet; run `attnzoo bench speed` first")
    try:
        info = store.run(run_id)
    except ValueError as e:
        raise _fail(str(e)) from None
    if info["status"] != "complete":  # said on stderr: the CSV and JSON on stdout stay clean
        state = info["note"] if info["status"] == "interrupted" and info["note"] else info["status"]
        err.print(f"run {run_id} is {info['status']}: {state}", soft_wrap=True, highlight=False)
    rows = store.speed([run_id], mixer=mixer, pattern=pattern, mode=mode)
    cols = list(RESULTS_KEYS)
    if fmt == "json":  # documented and held stable: attnzoo.cli_summary
        print_json([pick(r, RESULTS_KEYS) for r in rows])
        return
    if fmt == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(cols)
        w.writerows([[r[c] for c in cols] for r in rows])
        return
    cells = [
        [r["mixer"], r["impl"], r["pattern"], r["mask"], r["mode"], str(r["seq_len"]), f"{r['median_s'] * 1e3:.3f}",
         f"{(r['peak_bytes'] or 0) / 2**20:.1f}", f"{r['gflops_per_s'] or 0:.1f}", f"{r['gemm_fraction'] or 0:.3f}"]
        for r in rows
    ]  # fmt: skip
    numbers = ["T", "ms", "MiB", "GFLOP\n/s", "of\nGEMM"]
    show(out, grid(f"run {run_id}: {len(rows)} measurements",
                   ["mixer", "impl", "pattern", "mask", "mode", *numbers], cells, right=numbers))  # fmt: skip


@app.command()
def docs(
    db: DbOption = None,
    wait: WaitOption = 10.0,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("site"),
) -> None:
    """Write the static reference site: one page per mechanism (its math, config, patterns,
    masks, paper, verification and measured results), indexes by family, layout and role."""
    from attnzoo.site import site_command

    try:
        result = site_command(db, out_dir, wait=wait)
    except ValueError as e:
        raise _fail(str(e)) from None
    except OSError as e:
        raise _fail(f"--out {str(out_dir)!r}: cannot write the site there: {e}") from None
    if result.note:
        err.print(result.note, soft_wrap=True, highlight=False)
    out.print(f"site written: {result.index.resolve()} ({len(result.pages)} pages)")


app.add_typer(store_app, name="store")
register_recommend(app)
guard_commands(app, bench_app, store_app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
