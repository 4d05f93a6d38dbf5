"""What a speed run measures: the suites, their validation, and the masks they build per length."""

from __future__ import annotations

import dataclasses
from typing import Any

from attnzoo.config import suggest
from attnzoo.ops.masks import MASK_KINDS, Mask
from attnzoo.registry import PATTERNS, MixerSpec, get_spec, list_mixers
from attnzoo.spec import LAYOUTS

MODES = ("fwd", "fwdbwd", "step")
# masks beyond the pattern's own full / causal; measured on self patterns only
EXTRA_MASKS = ("sliding-window", "document", "prefix-lm", "block-causal")
GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class SpeedSuite:
    """One speed run's plan.

    Attributes:
        name: suite name recorded with the run (``quick``, ``full`` or ``custom``).
        mixers: mechanism names, or ``None`` for every registered one.
        seq_lens: token counts T (a grid block gets the most even grid with about T tokens:
            ``h = w = round(sqrt(T))``, ``d = h = w = round(cbrt(T))``; recorded as its count).
        image_sizes: grid sides for grid blocks (``h = w = s`` or ``d = h = w = s``, recorded as
            ``T = s**2`` or ``s**3``); ``None`` means the grids nearest to ``seq_lens``.
        patterns: CAB patterns to measure (each mixer measures those it supports).
        masks: extra mask kinds (beyond full / causal) for self patterns.
        batch, heads, head_dim: shape; ``d_model = heads * head_dim``.
        modes: ``fwd``, ``fwdbwd`` and/or ``step`` (one streaming step at position T, for
            mixers with a state, causal-self pattern, after T untimed steps).
        repeats, warmup: timed calls and untimed warm-up calls per measurement.
        memory_budget: bytes; work predicted to need more is skipped and recorded.
        time_cap: seconds for one measurement (warm-up + repeats); predicted to exceed: skipped.
        no_skip: measure every length: no prediction, no probes, no skip (``--no-skip``); a
            failure still stops its cell.
        skip_impls: implementations not timed (they are still correctness-checked), e.g. the
            ``reference`` and token-loop ``recurrent`` paths that exist to verify the fast ones.
        window, documents, block: parameters of the extra masks (prefix-LM uses T // 4).
        baseline: the mechanism the report's efficiency lengths and the README's speed ratios
            compare against (exact softmax attention).
    """

    name: str = "custom"
    mixers: tuple[str, ...] | None = None
    seq_lens: tuple[int, ...] = (256, 1024, 2048)
    image_sizes: tuple[int, ...] | None = None
    patterns: tuple[str, ...] = PATTERNS
    masks: tuple[str, ...] = ("sliding-window", "document")
    batch: int = 1
    heads: int = 4
    head_dim: int = 64
    modes: tuple[str, ...] = MODES
    repeats: int = 5
    warmup: int = 1
    memory_budget: int = 2 * GiB
    time_cap: float = 30.0
    no_skip: bool = False
    skip_impls: tuple[str, ...] = ()
    window: int = 256
    documents: int = 4
    block: int = 128
    baseline: str = "softmax"
    explicit_mixers: bool = False  # named by the user: refuse patterns they do not support
    explicit_patterns: bool = False

    def __post_init__(self) -> None:
        def need(cond: bool, arg: str, value: Any, expected: str) -> None:
            if not cond:
                raise ValueError(f"{arg}: expected {expected}, got {value!r}")

        need(len(self.seq_lens) > 0 and all(isinstance(t, int) and t >= 1 for t in self.seq_lens),
             "--seq-lens", self.seq_lens, "positive integers such as 256,1024,4096")  # fmt: skip
        object.__setattr__(self, "seq_lens", tuple(sorted(set(self.seq_lens))))
        if self.image_sizes is not None:
            need(len(self.image_sizes) > 0 and all(isinstance(s, int) and s >= 1 for s in self.image_sizes),
                 "--image-sizes", self.image_sizes, "positive grid sides such as 32,64,128")  # fmt: skip
            object.__setattr__(self, "image_sizes", tuple(sorted(set(self.image_sizes))))
        for p in self.patterns:
            need(
                p in PATTERNS,
                "--patterns",
                p,
                f"one of {', '.join(PATTERNS)}{suggest(p, PATTERNS)}",
            )
        need(len(self.patterns) > 0, "--patterns", self.patterns, "at least one pattern")
        for m in self.masks:
            need(
                m in MASK_KINDS,
                "--masks",
                m,
                f"mask kinds from {', '.join(MASK_KINDS)}{suggest(m, MASK_KINDS)}",
            )
        for mode in self.modes:
            need(mode in MODES, "--mode", mode, f"fwd, fwdbwd or step{suggest(mode, MODES)}")
        need(len(self.modes) > 0, "--mode", self.modes, "fwd, fwdbwd and/or step")
        for arg, value in (("--batch", self.batch), ("--heads", self.heads), ("--head-dim", self.head_dim),
                           ("--repeats", self.repeats), ("--documents", self.documents),
                           ("--window", self.window), ("--block", self.block)):  # fmt: skip
            need(isinstance(value, int) and value >= 1, arg, value, "an integer >= 1")
        need(self.warmup >= 0, "--warmup", self.warmup, "an integer >= 0")
        need(
            self.memory_budget > 0,
            "--memory-budget",
            self.memory_budget,
            "a positive size such as 4GiB",
        )
        need(self.time_cap > 0, "--time-cap", self.time_cap, "positive seconds")
        need(isinstance(self.no_skip, bool), "--no-skip", self.no_skip, "True or False")
        need(isinstance(self.baseline, str) and bool(self.baseline), "baseline", self.baseline,
             "a mechanism name")  # fmt: skip
        if self.mixers is not None:
            need(len(self.mixers) > 0, "--mixers", self.mixers, "at least one mechanism name")
            for name in self.mixers:
                try:
                    get_spec(name)
                except ValueError as e:
                    raise ValueError(f"--mixers: {e}") from None
            if self.explicit_mixers and self.explicit_patterns:
                for name in self.mixers:
                    spec = get_spec(name)
                    unsupported = [p for p in self.patterns if p not in spec.patterns]
                    if unsupported:
                        raise ValueError(
                            f"--patterns: {name} does not support {', '.join(unsupported)}; "
                            f"it supports {', '.join(spec.patterns)}"
                        )

    def lengths_for(self, spec: MixerSpec) -> tuple[int, ...]:
        """The token counts measured for ``spec``: ``seq_lens``, or ``s**rank`` per image size
        for a grid layout."""
        rank = len(LAYOUTS[spec.layout].axes)
        if rank > 1 and self.image_sizes is not None:
            return tuple(s**rank for s in self.image_sizes)
        return self.seq_lens

    @property
    def d_model(self) -> int:
        return self.heads * self.head_dim

    def specs(self) -> list[MixerSpec]:
        if self.mixers is None:
            return list_mixers()
        return [get_spec(n) for n in self.mixers]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> SpeedSuite:
        return dataclasses.replace(self, **changes)


SUITES: dict[str, SpeedSuite] = {
    # every registered mechanism's fast paths on all its patterns at four lengths: minutes on 2 cores
    "quick": SpeedSuite(
        name="quick",
        seq_lens=(256, 1024, 2048, 4096),
        repeats=3,
        time_cap=20.0,
        skip_impls=("reference", "recurrent"),
        modes=("fwd", "fwdbwd"),
    ),  # fmt: skip  (step mode's T-step prefill would triple the quick suite: --mode step)
    # issue 4's scaling claims: linear family vs softmax, forward, training (forward + backward)
    # and one streaming step, B=1, H=8, K=V=64, T from 2k to 32k (time/memory exponents; step
    # latency flat vs KV-cache growth)
    "linear": SpeedSuite(
        name="linear",
        mixers=("softmax", "linear", "lightning", "gla"),
        seq_lens=(2048, 8192, 32768),
        patterns=("causal-self",),
        masks=(),
        heads=8,
        modes=("fwd", "fwdbwd", "step"),
        repeats=3,
        memory_budget=8 * GiB,
        time_cap=120.0,
        skip_impls=("reference", "recurrent"),
        explicit_mixers=True,
    ),  # fmt: skip
    "full": SpeedSuite(
        name="full",
        seq_lens=(256, 512, 1024, 2048, 4096, 8192, 16384),
        masks=EXTRA_MASKS,
        repeats=7,
        memory_budget=8 * GiB,
        time_cap=120.0,
    ),  # fmt: skip
}


def masks_for(suite: SpeedSuite, spec: MixerSpec, pattern: str) -> list[str]:
    """Mask kinds measured for a (mixer, pattern): the pattern's own, plus supported extras."""
    causal = pattern.startswith("causal")
    base = "causal" if causal else "full"
    out = [base]
    if pattern.endswith("cross"):
        return out
    for kind in suite.masks:
        if kind in ("full", "causal") or kind not in spec.masks:
            continue
        if kind in ("prefix-lm", "block-causal") and not causal:
            continue
        out.append(kind)
    return out


def build_mask(kind: str, causal: bool, T: int, suite: SpeedSuite) -> Mask:
    """The concrete mask of ``kind`` at length T (parameters from the suite)."""
    if kind in ("full", "causal"):
        return Mask(causal=causal)
    if kind == "sliding-window":
        return Mask(causal=causal, window=suite.window)
    if kind == "document":
        n = min(suite.documents, T)
        lengths = [T // n] * n
        lengths[-1] += T - sum(lengths)
        return Mask.document(lengths, causal=causal)
    if kind == "prefix-lm":
        return Mask.prefix_lm(max(1, T // 4))
    if kind == "block-causal":
        return Mask.block_causal(suite.block)
    raise ValueError(f"mask kind {kind!r} is not benchmarkable; known: {', '.join(MASK_KINDS)}")
