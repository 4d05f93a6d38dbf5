"""Predicting a longer length's time and peak memory from shorter ones, so the speed runner can
skip work that would exceed its memory budget or time cap, and say why. Torch-free.

The rules, each against a way a prediction was fooled before (one noisy call at T=8 predicted
9442 s and 5.69 GiB where the truth was a second and 16 MiB):

- **Points**: each measured length gives ``(T, min_s, bytes)``; the *minimum* of its timed
  calls, since noise (another process, a page fault) only ever slows a call down.
- **Usable points**: lengths below :data:`MIN_FIT_T` and times below :data:`MIN_FIT_S` are not
  extrapolated from: there fixed costs (dispatch, allocation, Python) dominate and scale with
  nothing. Memory needs only the length (allocator counts are exact, not noisy).
- **Model**: the exponent of T the mechanism declares (:class:`Declared`, read from
  ``MixerSpec.complexity`` by :mod:`attnzoo.bench.complexity`), unless a power-law fit over the
  usable lengths within :data:`FIT_WINDOW` x of the longest is believable: at least two lengths
  spanning ``stats.MIN_RANGE`` x (a 64/128 probe pair does not), an exponent within
  :data:`WILD` of the declared one, and R² at least :data:`MIN_R2` when there are three or more.
  Memory is exact, not noisy: there any fit below the declared exponent is believed (the
  declared term bounds the paths, e.g. blocked attention's ``O(T·block)`` under ``O(T·S)``, and
  fixed-size buffers flatten a local fit). A believed fit's exponent is used (never below
  linear for a whole-sequence call).
- **Scaling**: ``y_i * (T / T_i) ** exponent`` from the point that predicts the *least*
  (noise inflates; with a declared exponent that bounds the true one, every point gives an
  upper bound and the least is the tightest).
- **Probes**: :func:`decide` measures unrecorded probe lengths (:data:`PROBE_LENGTHS`, then
  doublings up to ``T / PROBE_SHARE``) when no time point is usable or before it records a
  skip, if the probe itself is predicted to fit the budget and a ``1 / PROBE_SHARE`` share of the
  cap. A probe ladder that stays below :data:`MIN_FIT_S` up to ``T / 8`` bounds T's call to
  well under a second, so running it unpredicted is safe.

A skip carries its evidence (:meth:`Verdict.evidence`): the points, the fits, the models and
why, the prediction and the limit. :class:`SkipLedger` notes a skip that the same run later
proves wrong.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from attnzoo.bench.complexity import UNKNOWN_EXPONENT, exponents
from attnzoo.stats import MIN_RANGE, PowerFit, fit_power_law
from attnzoo.text import fmt_bytes

MIN_FIT_T = 64  # shorter lengths are not extrapolated from
MIN_FIT_S = 1e-3  # s; faster calls are dominated by fixed costs
FIT_WINDOW = 8.0  # a fit uses the usable lengths within this ratio of the longest
WILD = 1.0  # a fitted exponent further than this from the declared one is not believed
MIN_R2 = 0.9  # nor a fit over three or more lengths scattered more than this
PROBE_LENGTHS = (64, 128)  # first probes, before a length above 2 * 128 with nothing usable
PROBE_REPEATS = 3  # timed calls of a probe (its minimum is used), after one warm-up
PROBE_SHARE = 4.0  # later probes: at most T / 4, predicted at most cap / 4


@dataclasses.dataclass(frozen=True)
class Point:
    """One measured length: the fastest call's seconds and the call's peak bytes."""

    T: int
    min_s: float
    bytes: int
    probe: bool = False  # measured only to predict (not recorded as a speed row)

    def as_dict(self) -> dict[str, Any]:
        return {"T": self.T, "min_s": self.min_s, "bytes": self.bytes, "probe": self.probe}


@dataclasses.dataclass(frozen=True)
class Declared:
    """Exponents of T of one call's time and peak memory, as the mechanism declares them."""

    time: float
    memory: float
    min_exponent: float  # no fit is believed below this (1 for whole-sequence calls, 0 a step)
    source: str  # what they were read from, and every adjustment

    @classmethod
    def of(
        cls, complexity: str, layout_axes: tuple[str, ...] = ("T",), *, mode: str = "fwd",
        state: str = "none", impl: str = "",
    ) -> Declared:  # fmt: skip
        """From ``MixerSpec.complexity`` for one (impl, mode):

        - undeclared time: :data:`attnzoo.bench.complexity.UNKNOWN_EXPONENT` (quadratic);
          undeclared memory: time's; both at least linear (a call reads and writes T tokens);
        - ``impl="reference"``: at least quadratic (references materialise the weights);
        - ``mode="step"`` (one token at position T): flat for a constant state, else one less
          than the whole sequence's and at least linear (a KV cache's step reads T keys).
        """
        t, m = exponents(complexity, layout_axes)
        notes = [f"declared {complexity!r}"]
        if t is None:
            t = UNKNOWN_EXPONENT
            notes.append(f"no time term read: T^{t:g} assumed")
        if m is None:
            m = t
            notes.append("no memory term: as time")
        t, m = max(t, 1.0), max(m, 1.0)
        if impl == "reference" and min(t, m) < 2.0:
            t, m = max(t, 2.0), max(m, 2.0)
            notes.append("reference path: at least quadratic")
        if mode == "step":
            if state == "constant":
                t = m = 0.0
                notes.append("one step with a constant state: flat")
            else:
                t, m = max(1.0, t - 1.0), max(1.0, m - 1.0)
                notes.append("one step: one power less")
        return cls(t, m, 0.0 if mode == "step" else 1.0, "; ".join(notes))

    def as_dict(self) -> dict[str, Any]:
        return {"time_exponent": self.time, "memory_exponent": self.memory, "source": self.source}


@dataclasses.dataclass(frozen=True)
class Estimate:
    """One predicted quantity: its value, the model behind it and why that model."""

    value: float | None  # None: nothing usable to predict from
    model: str  # "fit", "declared" or "none"
    exponent: float | None
    why: str
    anchor: int | None = None  # the length it scales from
    fit: PowerFit | None = None

    def describe(self) -> str:
        if self.value is None:
            return f"no prediction: {self.why}"
        return f"T^{self.exponent:.2f} {self.model} from T={self.anchor}: {self.why}"

    def as_dict(self) -> dict[str, Any]:
        fit = self.fit
        return {
            "value": self.value, "model": self.model, "exponent": self.exponent,
            "why": self.why, "anchor_T": self.anchor,
            "fit": None if fit is None else {"exponent": fit.exponent, "r2": fit.r2, "n": fit.n,
                                             "t_min": fit.t_min, "t_max": fit.t_max},
        }  # fmt: skip


def estimate(
    points: Sequence[tuple[int, float]], T: int, declared: float, *, floor: float = 0.0,
    min_exponent: float = 1.0, exact: bool = False,
) -> Estimate:  # fmt: skip
    """``y`` at T from measured ``(T_i, y_i)`` (see the module docstring for the rules);
    ``floor``: smaller ``y`` are not usable; ``exact``: the values have no noise (memory), so a
    fit below the declared exponent is believed."""
    usable: dict[int, float] = {}
    for t, y in points:
        if t >= MIN_FIT_T and y > 0 and y >= floor:
            usable[t] = min(y, usable.get(t, y))
    if not usable:
        above = f" of at least {floor:g}" if floor > 0 else ""
        return Estimate(None, "none", None, f"no value{above} measured at T >= {MIN_FIT_T}")
    longest = max(usable)
    recent = sorted((t, y) for t, y in usable.items() if t * FIT_WINDOW >= longest)
    fit = fit_power_law(recent)
    model, exponent, candidates = "declared", declared, sorted(usable.items())
    if fit is None:
        why = "one usable length" + (
            f" within {FIT_WINDOW:g}x of the longest" if len(usable) > 1 else ""
        )
    elif fit.range < MIN_RANGE:
        why = f"usable lengths {fit.t_min:g}..{fit.t_max:g} too close to fit ({fit.range:.1f}x)"
    elif (fit.exponent - declared if exact else abs(fit.exponent - declared)) > WILD + 1e-9:
        why = f"fitted {fit.describe()} is more than {WILD:g} from the declared T^{declared:g}"
    elif fit.r2 is not None and fit.r2 < MIN_R2:
        why = f"fitted {fit.describe()} is scattered (R² < {MIN_R2:g})"
    else:
        model, exponent, candidates = "fit", max(fit.exponent, min_exponent), recent
        why = f"fitted {fit.describe()}, declared T^{declared:g}"
    value, anchor = min((y * (T / t) ** exponent, t) for t, y in candidates)
    return Estimate(value, model, exponent, why, anchor, fit)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Seconds of one call and its peak bytes at T."""

    T: int
    seconds: Estimate
    memory: Estimate
    points: tuple[Point, ...]
    declared: Declared

    def evidence(self) -> dict[str, Any]:
        return {"T": self.T, "points": [p.as_dict() for p in self.points],
                "declared": self.declared.as_dict(), "time": self.seconds.as_dict(),
                "memory": self.memory.as_dict()}  # fmt: skip


def predict(points: Sequence[Point], T: int, declared: Declared) -> Prediction:
    """Time (from the usable minimum times) and memory (from the bytes) of one call at T."""
    if T < 1:
        raise ValueError(f"predict: T must be >= 1, got {T}")
    secs = estimate([(p.T, p.min_s) for p in points], T, declared.time, floor=MIN_FIT_S,
                    min_exponent=declared.min_exponent)  # fmt: skip
    mem = estimate([(p.T, float(p.bytes)) for p in points], T, declared.memory,
                   min_exponent=declared.min_exponent, exact=True)  # fmt: skip
    return Prediction(T, secs, mem, tuple(points), declared)


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one measurement may use: peak bytes, and seconds for its ``calls`` calls (a step
    measurement also builds its state: ``T`` steps, about half as costly on average as the last
    when the step cost grows with position, as a KV cache's)."""

    memory_budget: float
    time_cap: float
    calls: int
    mode: str = "fwd"

    def total_seconds(self, per_call: float, T: int) -> float:
        total = per_call * self.calls
        return total + T * per_call / 2 if self.mode == "step" else total

    def what(self, T: int) -> str:
        return f"{self.calls} calls" + (f" and a {T}-step prefill" if self.mode == "step" else "")

    def for_probe(self) -> Limits:
        return Limits(self.memory_budget, self.time_cap / PROBE_SHARE, 2 + PROBE_REPEATS, self.mode)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A predicted excess: ``kind`` ``memory`` (bytes) or ``time`` (seconds of a measurement)."""

    kind: str
    predicted: float
    limit: float
    reason: str
    evidence: dict[str, Any]


def verdict(pred: Prediction, limits: Limits) -> Verdict | None:
    """Why a measurement at ``pred.T`` would exceed ``limits``, or ``None``."""
    mem, secs = pred.memory, pred.seconds
    total = None if secs.value is None else limits.total_seconds(secs.value, pred.T)
    evidence = {**pred.evidence(), "calls": limits.calls, "total_s": total,
                "memory_budget": limits.memory_budget, "time_cap": limits.time_cap}  # fmt: skip
    if mem.value is not None and mem.value > limits.memory_budget:
        reason = (f"predicted peak memory {fmt_bytes(mem.value)} > budget "
                  f"{fmt_bytes(limits.memory_budget)} ({mem.describe()})")  # fmt: skip
        return Verdict("memory", mem.value, limits.memory_budget, reason,
                       {**evidence, "decided_by": "memory"})  # fmt: skip
    if total is not None and total > limits.time_cap:
        reason = (f"predicted {total:.1f} s for {limits.what(pred.T)} > time cap "
                  f"{limits.time_cap:g} s ({secs.describe()})")  # fmt: skip
        return Verdict("time", total, limits.time_cap, reason, {**evidence, "decided_by": "time"})
    return None


def next_probe(measured: Sequence[int], T: int) -> int | None:
    """The next probe length before T (see the module docstring), or ``None``."""
    if T <= 2 * PROBE_LENGTHS[-1]:
        return None
    longest = max(measured, default=0)
    for length in PROBE_LENGTHS:
        if length > longest:
            return length
    return 2 * longest if 2 * longest * PROBE_SHARE <= T else None


def decide(
    history: list[Point], T: int, declared: Declared, limits: Limits,
    probe: Callable[[int], Point] | None = None,
) -> tuple[Prediction, Verdict | None]:  # fmt: skip
    """The prediction at T and its verdict, probing first when nothing usable predicts the
    time or before a skip (see the module docstring). ``probe(L)`` measures length L; each probe
    is appended to ``history``. Exceptions of ``probe`` propagate."""
    while True:
        pred = predict(history, T, declared)
        found = verdict(pred, limits)
        if probe is None or (found is None and pred.seconds.value is not None):
            return pred, found
        length = next_probe([p.T for p in history], T)
        if length is None:
            return pred, found
        if verdict(predict(history, length, declared), limits.for_probe()) is not None:
            return pred, found  # the probe itself would cost too much
        history.append(probe(length))


def overshoot(pred: Prediction, limits: Limits, min_s: float, peak_bytes: int) -> str | None:
    """What a measurement at ``pred.T`` that the prediction let run exceeded, or ``None``."""
    mem, secs = pred.memory.value, pred.seconds.value
    if mem is not None and mem <= limits.memory_budget < peak_bytes:
        return (f"T={pred.T}: predicted peak {fmt_bytes(mem)} within the budget "
                f"{fmt_bytes(limits.memory_budget)}, measured {fmt_bytes(peak_bytes)}")  # fmt: skip
    total = limits.total_seconds(min_s, pred.T)
    if secs is not None and limits.total_seconds(secs, pred.T) <= limits.time_cap < total:
        return (f"T={pred.T}: predicted {limits.total_seconds(secs, pred.T):.1f} s within the cap "
                f"{limits.time_cap:g} s, measured {total:.1f} s")  # fmt: skip
    return None


@dataclasses.dataclass(frozen=True)
class CellKey:
    """What a measurement is of, for comparing a skip with later measurements."""

    mixer: str
    impl: str
    pattern: str
    mask: str  # the mask kind
    mode: str
    base_mask: bool  # the pattern's own mask (full / causal): materialises nothing extra

    def __str__(self) -> str:
        return f"{self.mixer}/{self.impl} {self.pattern} {self.mask} {self.mode}"


def dominates(ran: CellKey, skipped: CellKey, kind: str) -> bool:
    """Whether ``ran`` costs at least what ``skipped`` does at the same length, in ``kind``
    (``memory`` or ``time``): same mixer, impl and pattern; the same mode, or forward+backward
    against forward; the same mask, or (memory only) any mask against the pattern's own, which
    materialises nothing extra (a masked call's time can be lower: skipped tiles)."""
    same = (ran.mixer, ran.impl, ran.pattern) == (skipped.mixer, skipped.impl, skipped.pattern)
    mode = ran.mode == skipped.mode or (skipped.mode, ran.mode) == ("fwd", "fwdbwd")
    mask = ran.mask == skipped.mask or (kind == "memory" and skipped.base_mask)
    return same and mode and mask


class SkipLedger:
    """A run's skips by prediction, and the measurements that prove one wrong: a measurement
    at the skipped length or longer, of a cell that :func:`dominates` the skipped one, within
    the limit the skip said would be exceeded. Each skip is noted at most once."""

    def __init__(self) -> None:
        self._skips: list[tuple[CellKey, int, Verdict]] = []
        self._ran: list[tuple[CellKey, int, float, int, Limits]] = []

    def skipped(self, key: CellKey, T: int, found: Verdict) -> list[str]:
        """Record a skip; returns the note if something measured earlier already disproves it."""
        for ran in self._ran:
            note = _disproof(key, T, found, *ran)
            if note:
                return [note]
        self._skips.append((key, T, found))
        return []

    def measured(self, key: CellKey, T: int, min_s: float, peak_bytes: int, limits: Limits) -> list[str]:  # fmt: skip
        """Record a measurement; returns a note for every open skip it disproves."""
        self._ran.append((key, T, min_s, peak_bytes, limits))
        notes, still = [], []
        for skip in self._skips:
            note = _disproof(*skip, key, T, min_s, peak_bytes, limits)
            if note:
                notes.append(note)
            else:
                still.append(skip)
        self._skips = still
        return notes


def _disproof(
    skipped: CellKey, T: int, found: Verdict, ran: CellKey, ran_T: int, min_s: float,
    peak_bytes: int, limits: Limits,
) -> str | None:  # fmt: skip
    if ran_T < T or not dominates(ran, skipped, found.kind):
        return None
    head = f"{skipped} at T={T} was skipped ({found.reason}), but {ran} ran at T={ran_T}"
    if found.kind == "memory" and peak_bytes <= found.limit:
        return f"{head} with a peak of {fmt_bytes(peak_bytes)}, within the budget"
    total = limits.total_seconds(min_s, ran_T)
    if found.kind == "time" and total <= found.limit:
        return f"{head} in {total:.2f} s for {limits.what(ran_T)}, within the cap"
    return None
