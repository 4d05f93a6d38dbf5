"""Argument checks shared by the task configs: errors name the owner, the argument, the value and
what was expected (``TypeError`` for a wrong type, ``ValueError`` for a bad value)."""

from __future__ import annotations

import math


def check_int(owner: str, name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")


def check_float(owner: str, name: str, value: object, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {name} must be a float, got {value!r} ({type(value).__name__})")
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"{owner}: {name} must be a finite float in [{lo}, {hi}], got {value}")
    return float(value)
