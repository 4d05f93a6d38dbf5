"""Document lengths for the speed bench's document-shaped masks, drawn from a real corpus's
long-tailed length distribution instead of an equal split.

Source: the ProLong-64k document-length histogram that the Long-Context Attention Benchmark
samples its document masks from (LongCA-bench, ``exps/attn/distribution/prolong64k.json``;
arXiv 2510.17896; ProLong: Gao et al. 2024, "How to Train Long-Context Language Models
(Effectively)", arXiv 2410.02660). 44 bins of tokens ``[lo, hi)`` with their probabilities: the
median document has 352-384 tokens, 7% have more than 1.8k and 1.2% more than 8.9k.

Sampling (as LongCA-bench does): pick a bin by its probability, a length uniformly inside it (at
least 1), cut the last document to what remains, until the lengths sum to ``T``. Seeded, so a
run's masks are reproducible.
"""

from __future__ import annotations

import random

# (lo, hi, probability) of ProLong-64k document lengths in tokens, as LongCA-bench bins them
PROLONG_64K: tuple[tuple[int, int, float], ...] = (
    (0, 64, 0.041225), (64, 96, 0.05438), (96, 128, 0.057541), (128, 160, 0.055729),
    (160, 192, 0.052027), (192, 224, 0.04831), (224, 256, 0.044587), (256, 288, 0.041382),
    (288, 320, 0.038608), (320, 352, 0.035), (352, 384, 0.032118), (384, 416, 0.030124),
    (416, 448, 0.028552), (448, 480, 0.026684), (480, 512, 0.026249), (512, 544, 0.024683),
    (544, 576, 0.021875), (576, 608, 0.019907), (608, 640, 0.018437), (640, 672, 0.016788),
    (672, 704, 0.015729), (704, 736, 0.014684), (736, 768, 0.013679), (768, 800, 0.012685),
    (800, 832, 0.011853), (832, 864, 0.010844), (864, 928, 0.019182), (928, 992, 0.016678),
    (992, 1056, 0.015301), (1056, 1120, 0.012752), (1120, 1184, 0.010927),
    (1184, 1280, 0.013861), (1280, 1376, 0.011269), (1376, 1504, 0.012483),
    (1504, 1632, 0.010406), (1632, 1792, 0.010112), (1792, 2016, 0.010995),
    (2016, 2304, 0.010428), (2304, 2720, 0.010183), (2720, 3392, 0.010054),
    (3392, 4768, 0.010122), (4768, 8928, 0.010019), (8928, 50272, 0.010008),
    (50272, 61920, 0.001531),
)  # fmt: skip


def document_lengths(T: int, seed: int = 0, *, at_least: int = 1) -> tuple[int, ...]:
    """Lengths summing to ``T`` drawn from :data:`PROLONG_64K` (see the module docstring).

    ``at_least`` documents: when the draw gives fewer (a short ``T``), the longest document is
    halved until there are enough (kinds such as shared-question need two).
    """
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"document_lengths: T must be a positive int, got {T!r}")
    if not 1 <= at_least <= T:
        raise ValueError(f"document_lengths: at_least must be in [1, T={T}], got {at_least}")
    rng = random.Random(seed)
    weights = [w for _, _, w in PROLONG_64K]
    out: list[int] = []
    while sum(out) < T:
        lo, hi, _ = rng.choices(PROLONG_64K, weights=weights, k=1)[0]
        out.append(min(rng.randint(max(lo, 1), hi - 1), T - sum(out)))
    while len(out) < at_least:
        i = max(range(len(out)), key=out.__getitem__)
        out[i : i + 1] = [out[i] // 2, out[i] - out[i] // 2]
    return tuple(out)
