"""What a speed run measures: the suites, their validation, and the masks they build per length."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from attnzoo.bench.doc_lengths import document_lengths
from attnzoo.config import suggest
from attnzoo.ops.masks import MASK_KINDS, Mask
from attnzoo.registry import PATTERNS, MixerSpec, get_spec, list_mixers
from attnzoo.spec import LAYOUTS

MODES = ("fwd", "fwdbwd", "step")
# masks beyond the pattern's own full / causal; measured on self patterns only. An entry may join
# kinds with "+" ("document+prefix-lm": prefix-LM over documents)
EXTRA_MASKS = ("sliding-window", "document", "prefix-lm", "block-causal", "global",
               "document+prefix-lm", "shared-question", "causal-blockwise", "qk-sparse",
               "hash-sparse")  # fmt: skip
# kinds that exist only with causal attention
CAUSAL_ONLY = ("prefix-lm", "block-causal", "shared-question", "causal-blockwise")
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
        masks: extra mask kinds (beyond full / causal) for self patterns; ``+`` joins kinds into
            one mask (``document+prefix-lm``).
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
        window, block: parameters of the extra masks (prefix-LM uses T // 4).
        global_tokens: global tokens of the ``global`` kind (with the window).
        sparsity: fraction of queries and of keys the ``qk-sparse`` kind drops.
        buckets: hash buckets of the ``hash-sparse`` kind (a uniform random bucket per token).
        mask_seed: seed of the document lengths (:mod:`attnzoo.bench.doc_lengths`, the
            ProLong-64k distribution), the dropped tokens and the buckets.
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
    block: int = 128
    global_tokens: int = 64
    sparsity: float = 0.5
    buckets: int = 8
    mask_seed: int = 0
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
            for part in m.split("+"):
                need(part in MASK_KINDS, "--masks", m,
                     f"mask kinds from {', '.join(MASK_KINDS)} (joined with +){suggest(part, MASK_KINDS)}")  # fmt: skip
        for mode in self.modes:
            need(mode in MODES, "--mode", mode, f"fwd, fwdbwd or step{suggest(mode, MODES)}")
        need(len(self.modes) > 0, "--mode", self.modes, "fwd, fwdbwd and/or step")
        for arg, value in (("--batch", self.batch), ("--heads", self.heads), ("--head-dim", self.head_dim),
                           ("--repeats", self.repeats), ("global_tokens", self.global_tokens),
                           ("--window", self.window), ("--block", self.block),
                           ("buckets", self.buckets)):  # fmt: skip
            need(isinstance(value, int) and value >= 1, arg, value, "an integer >= 1")
        need(self.warmup >= 0, "--warmup", self.warmup, "an integer >= 0")
        need(
            self.memory_budget > 0,
            "--memory-budget",
            self.memory_budget,
            "a positive size such as 4GiB",
        )
        need(self.time_cap > 0, "--time-cap", self.time_cap, "positive seconds")
        need(isinstance(self.sparsity, float) and 0.0 <= self.sparsity < 1.0, "sparsity",
             self.sparsity, "a fraction in [0, 1)")  # fmt: skip
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
    out = ["causal" if causal else "full"]
    if pattern.endswith("cross"):
        return out
    usable = spec.masks_for(pattern)
    for kind in suite.masks:
        parts = kind.split("+")
        if kind in ("full", "causal") or any(p not in usable for p in parts):
            continue
        if not causal and any(p in CAUSAL_ONLY for p in parts):
            continue
        out.append(kind)
    return out


def build_mask(kind: str, causal: bool, T: int, suite: SpeedSuite) -> Mask:
    """The concrete mask of ``kind`` (kinds joined by ``+`` make one mask) at length T, with
    the suite's parameters; documents from :func:`attnzoo.bench.doc_lengths.document_lengths`."""
    fields: dict[str, Any] = {"causal": causal}
    for part in kind.split("+"):
        if part not in MASK_KINDS:
            raise ValueError(
                f"mask kind {part!r} is not benchmarkable; known: {', '.join(MASK_KINDS)}"
            )
        fields.update(_mask_fields(part, T, suite))
    return Mask(**fields)


def _mask_fields(kind: str, T: int, suite: SpeedSuite) -> dict[str, Any]:
    rng = random.Random(suite.mask_seed)
    if kind == "sliding-window":
        return {"window": suite.window}
    if kind == "global":
        return {"window": suite.window, "global_tokens": suite.global_tokens}
    if kind in ("document", "shared-question", "causal-blockwise"):
        docs = document_lengths(T, suite.mask_seed, at_least=1 if kind == "document" else min(2, T))
        flag = {
            "shared-question": {"shares_question": True},
            "causal-blockwise": {"last_sees_all": True},
        }
        return {"documents": docs, **flag.get(kind, {})}
    if kind == "prefix-lm":
        return {"prefix": max(1, T // 4)}
    if kind == "block-causal":
        return {"block": suite.block}
    if kind == "qk-sparse":
        n = int(suite.sparsity * T)
        return {"drop_q": tuple(sorted(rng.sample(range(T), n))),
                "drop_k": tuple(sorted(rng.sample(range(T), n)))}  # fmt: skip
    if kind == "hash-sparse":
        return {"buckets": tuple(rng.randrange(suite.buckets) for _ in range(T))}
    return {}
