"""What a set of timings can and cannot support: spread, noise, and power-law fits with their
uncertainty. Torch-free: the bench, the report and ``attnzoo recommend`` share these rules.

- :class:`TimeStats`: the quantiles of repeated timings of one call; ``spread`` is the
  interquartile range relative to the median, unknown below :data:`MIN_REPEATS` timings.
- :func:`trust`: ``"ok"``, ``"noisy"`` (spread above :data:`NOISY_SPREAD`) or ``"few repeats"``.
- :func:`fit_power_law`: least squares of log(y) on log(T) with R² and a 95 % confidence
  interval of the exponent (Student's t), and :func:`supports_exponent`, the rule for when such
  a fit is a finding (at least :data:`MIN_LENGTHS` lengths over at least :data:`MIN_RANGE` x).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence

MIN_REPEATS = 3  # below this a timing has no measured spread
NOISY_SPREAD = 0.25  # interquartile range / median above this marks a timing noisy
MIN_LENGTHS = 3  # a scaling exponent needs this many distinct lengths ...
MIN_RANGE = 4.0  # ... spanning at least this ratio of longest to shortest

# two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (then the normal's 1.96)
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t95(dof: int) -> float:
    """The two-sided 95 % quantile of Student's t with ``dof`` degrees of freedom."""
    if dof < 1:
        raise ValueError(f"t95: dof must be >= 1, got {dof}")
    return _T95[dof - 1] if dof <= len(_T95) else 1.96


@dataclasses.dataclass(frozen=True)
class TimeStats:
    """Quantiles (seconds) of ``n`` timings of one call."""

    n: int
    median: float
    min: float
    max: float
    q1: float
    q3: float

    @classmethod
    def of(cls, times: Sequence[float]) -> TimeStats:
        if not times:
            raise ValueError("TimeStats.of: no timings")
        ts = sorted(float(t) for t in times)
        if len(ts) == 1:
            q1 = q3 = ts[0]
        else:
            q1, _, q3 = statistics.quantiles(ts, n=4, method="inclusive")
        return cls(len(ts), statistics.median(ts), ts[0], ts[-1], q1, q3)

    @property
    def spread(self) -> float | None:
        return relative_spread(self.n, self.median, self.q1, self.q3)

    def as_row(self) -> dict[str, float]:
        """The speed table's columns for these timings."""
        return {"median_s": self.median, "min_s": self.min, "max_s": self.max,
                "q1_s": self.q1, "q3_s": self.q3}  # fmt: skip


def relative_spread(n: int | None, median: float | None, q1: float | None, q3: float | None) -> float | None:  # fmt: skip
    """Interquartile range over the median; ``None`` when unknown (too few timings, or a row
    recorded before the store kept quantiles)."""
    if n is None or n < MIN_REPEATS or None in (median, q1, q3) or not median or median <= 0:
        return None
    return (q3 - q1) / median


def trust(n: int | None, spread: float | None) -> str:
    """``"ok"``, ``"noisy"`` or ``"few repeats"`` for a timing of ``n`` repeats and ``spread``."""
    if n is None or n < MIN_REPEATS or spread is None:
        return "few repeats"
    return "noisy" if spread > NOISY_SPREAD else "ok"


def row_trust(row: dict) -> str:
    """:func:`trust` of a ``speed`` row (``repeats``, ``median_s``, ``q1_s``, ``q3_s``)."""
    spread = relative_spread(
        row.get("repeats"), row.get("median_s"), row.get("q1_s"), row.get("q3_s")
    )
    return trust(row.get("repeats"), spread)


@dataclasses.dataclass(frozen=True)
class PowerFit:
    """y ~ prefactor * T^exponent fitted in log-log space over ``n`` points."""

    exponent: float
    prefactor: float
    r2: float | None  # None for two points (a line through them says nothing)
    ci: tuple[float, float] | None  # 95 % interval of the exponent; None below three points
    n: int
    t_min: float
    t_max: float

    def at(self, T: float) -> float:
        return self.prefactor * T**self.exponent

    @property
    def range(self) -> float:
        return self.t_max / self.t_min

    def describe(self) -> str:
        s = f"T^{self.exponent:.2f}"
        if self.ci is not None:
            s += f" (95% CI {self.ci[0]:.2f}..{self.ci[1]:.2f}, R² {self.r2:.3f})"
        return s + f" from {self.n} lengths {self.t_min:g}..{self.t_max:g}"


def fit_power_law(points: Sequence[tuple[float, float]]) -> PowerFit | None:
    """Least-squares fit of log(y) on log(T) over points with T > 0 and y > 0 (others dropped);
    ``None`` below two distinct lengths."""
    pts = [(math.log(t), math.log(y)) for t, y in points if t and y and t > 0 and y > 0]
    xs = sorted({x for x, _ in pts})
    if len(xs) < 2:
        return None
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    sxy = sum((x - mx) * (y - my) for x, y in pts)
    slope = sxy / sxx
    intercept = my - slope * mx
    r2 = ci = None
    if n >= 3:
        resid = [y - (intercept + slope * x) for x, y in pts]
        sse = sum(r * r for r in resid)
        syy = sum((y - my) ** 2 for _, y in pts)
        r2 = 1.0 - sse / syy if syy > 0 else 1.0
        se = math.sqrt(sse / (n - 2) / sxx)
        half = t95(n - 2) * se
        ci = (slope - half, slope + half)
    return PowerFit(slope, math.exp(intercept), r2, ci, n, math.exp(xs[0]), math.exp(xs[-1]))


def supports_exponent(lengths: Sequence[float]) -> str | None:
    """Why these lengths cannot support a scaling exponent, or ``None`` when they can."""
    distinct = sorted({float(t) for t in lengths if t and t > 0})
    if len(distinct) < MIN_LENGTHS:
        return f"{len(distinct)} length(s); an exponent needs at least {MIN_LENGTHS}"
    if distinct[-1] / distinct[0] < MIN_RANGE:
        return (
            f"lengths {distinct[0]:g}..{distinct[-1]:g} span {distinct[-1] / distinct[0]:.1f}x; "
            f"an exponent needs at least {MIN_RANGE:g}x"
        )
    return None
