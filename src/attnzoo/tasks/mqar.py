"""Multi-query associative recall (MQAR), with Zoology's generator semantics.

Arora, Eyuboglu, et al., "Zoology: Measuring and Improving Recall in Efficient Language
Models", ICLR 2024. https://arxiv.org/abs/2312.04927  Code: github.com/HazyResearch/zoology
(``zoology/data/multiquery_ar.py``, function ``multiquery_ar``; Figure 2 sweep in
``zoology/experiments/paper_configs/iclr24_zoology_figure2/configs.py``).

One example of length ``L`` with ``n = num_kv_pairs`` and vocabulary ``V`` (``h = V // 2``):

- keys: ``n`` distinct tokens drawn uniformly without replacement from ``[1, h)``;
  values: ``n`` distinct tokens drawn uniformly without replacement from ``[h, V)``
  (so token 0 is never a key or a value);
- the first ``2n`` positions hold the pairs interleaved ``k1 v1 k2 v2 ... kn vn``;
- the remaining ``L - 2n`` positions are the query region, ``s = (L - 2n) // 2`` even slots.
  ``n`` distinct slot indices ``g`` in ``[0, s)`` are drawn without replacement with weights
  ``p(g) ∝ a·(g + 1)^(a - 1)`` (``a = power_a``, 0.01 by default: a power law that strongly
  favours slots near the start of the query region; ``a = 1`` is uniform). Key ``k_i`` is
  placed at position ``2n + 2·g_i`` (the i-th key gets the i-th drawn slot);
- every other query-region position is 0, or, with ``random_non_queries``, a token drawn
  uniformly from ``[0, V)`` (which may coincide with a key; such positions are not scored);
- targets are next-token targets, aligned with the inputs the way Zoology returns them
  (``labels[:, 1:]``): the value ``v_i`` is the token that "comes right after" query key
  ``k_i``, so ``targets[2n + 2·g_i] = v_i`` (the position *of* the query key, whose output a
  causal model uses to predict the next token); all other targets are ``IGNORE_INDEX`` (-100).

Zoology's asserts are kept: ``L`` even, ``V > L``, ``4n <= L``. Differences from Zoology:
numpy's global seed is replaced by a ``torch.Generator`` (same distributions, different
streams); the JRT ``num_passes`` option (repeating the kv prefix) is not provided (Zoology's
default, one pass, is what the Zoology paper uses). ``torch.multinomial`` without replacement
is sequential weighted sampling, the same distribution as ``numpy.random.choice(replace=False,
p=...)``. Zoology's accuracy is the mean over examples of each example's accuracy on its
scored positions; every example has exactly ``n`` of them, so that equals :func:`metric`'s
accuracy over all scored positions of the batch.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnzoo.models.sequence import SequenceModel
from attnzoo.tasks.checks import check_int
from attnzoo.tasks.registry import QualityTask, TaskParts, parse_config, register_task

IGNORE_INDEX = -100

#: (seq_len, num_kv_pairs) of Zoology Figure 2 (V = 8192 there; (512, 64) is commented out).
ZOOLOGY_FIGURE2: tuple[tuple[int, int], ...] = ((64, 4), (128, 8), (256, 16))


@dataclasses.dataclass(frozen=True)
class MQARConfig:
    """Parameters of the MQAR generator (Zoology's names in brackets).

    Attributes:
        vocab_size: ``V`` [vocab_size]; keys come from ``[1, V // 2)``, values from
            ``[V // 2, V)``. Must exceed ``seq_len``.
        seq_len: ``L`` [input_seq_len]; even, at least ``4 * num_kv_pairs``.
        num_kv_pairs: ``n`` [num_kv_pairs]; pairs in the prefix, each queried once.
        power_a: ``a`` [power_a] of the query-gap power law ``p(g) ∝ a·g^(a-1)``; > 0.
        random_non_queries: [random_non_queries] fill the unqueried query-region positions
            with uniform random tokens instead of 0. Zoology's default is ``True``; its
            Figure 2 sweep uses ``False``.
    """

    vocab_size: int = 8192
    seq_len: int = 64
    num_kv_pairs: int = 4
    power_a: float = 0.01
    random_non_queries: bool = True

    def __post_init__(self) -> None:
        owner = "MQARConfig"
        check_int(owner, "vocab_size", self.vocab_size, 4)
        check_int(owner, "seq_len", self.seq_len, 4)
        check_int(owner, "num_kv_pairs", self.num_kv_pairs, 1)
        if isinstance(self.power_a, bool) or not isinstance(self.power_a, (int, float)):
            raise TypeError(f"{owner}: power_a must be a float, got {self.power_a!r}")
        object.__setattr__(self, "power_a", float(self.power_a))
        if not isinstance(self.random_non_queries, bool):
            raise TypeError(
                f"{owner}: random_non_queries must be a bool, got {self.random_non_queries!r}"
            )
        self.validate()

    def validate(self) -> None:
        owner = "MQARConfig"
        if self.seq_len % 2 != 0:
            raise ValueError(
                f"{owner}: seq_len must be even (Zoology's assert), got {self.seq_len}"
            )
        if self.vocab_size <= self.seq_len:
            raise ValueError(
                f"{owner}: vocab_size must be > seq_len={self.seq_len} (Zoology's assert), "
                f"got {self.vocab_size}"
            )
        if 4 * self.num_kv_pairs > self.seq_len:
            raise ValueError(
                f"{owner}: num_kv_pairs must be <= seq_len / 4 = {self.seq_len // 4} "
                f"(2n prefix tokens plus n distinct query slots), got {self.num_kv_pairs}"
            )
        if not (math.isfinite(self.power_a) and self.power_a > 0):
            raise ValueError(f"{owner}: power_a must be a finite float > 0, got {self.power_a}")

    @property
    def context_size(self) -> int:
        """Length ``2n`` of the interleaved key-value prefix."""
        return 2 * self.num_kv_pairs

    @property
    def num_slots(self) -> int:
        """Number ``s = (L - 2n) // 2`` of even query slots after the prefix."""
        return (self.seq_len - self.context_size) // 2


def figure2_configs(
    vocab_size: int = 8192, random_non_queries: bool = False
) -> tuple[MQARConfig, ...]:
    """The Zoology Figure 2 grid :data:`ZOOLOGY_FIGURE2` as configs (Figure 2: V=8192, no noise)."""
    return tuple(
        MQARConfig(
            vocab_size=vocab_size,
            seq_len=seq_len,
            num_kv_pairs=kv,
            random_non_queries=random_non_queries,
        )
        for seq_len, kv in ZOOLOGY_FIGURE2
    )


@dataclasses.dataclass(frozen=True)
class Batch:
    """One MQAR batch.

    Attributes:
        inputs: token ids ``[B, L]`` (int64).
        targets: next-token targets ``[B, L]`` (int64), ``IGNORE_INDEX`` where not scored.
    """

    inputs: Tensor  # [B, L]
    targets: Tensor  # [B, L]

    @property
    def mask(self) -> Tensor:
        """Scored positions ``[B, L]`` (bool): exactly ``num_kv_pairs`` per row."""
        return self.targets != IGNORE_INDEX


def gap_probabilities(cfg: MQARConfig) -> Tensor:
    """Zoology's query-slot law ``p(g) ∝ a·(g+1)^(a-1)`` for slots ``g = 0..s-1`` (float64)."""
    g = torch.arange(1, cfg.num_slots + 1, dtype=torch.float64)  # [s]
    p = cfg.power_a * g ** (cfg.power_a - 1.0)
    return p / p.sum()


def _distinct_uniform(
    batch_size: int, low: int, high: int, k: int, generator: torch.Generator
) -> Tensor:
    """``k`` distinct integers per row, uniform without replacement from ``[low, high)``."""
    weights = torch.ones(batch_size, high - low, dtype=torch.float64)
    return torch.multinomial(weights, k, replacement=False, generator=generator) + low  # [B, k]


def make_batch(cfg: MQARConfig, batch_size: int, generator: torch.Generator) -> Batch:
    """Draw ``batch_size`` MQAR examples; identical for identical generator states.

    Shapes:
        inputs, targets: ``[batch_size, cfg.seq_len]``, int64.
    """
    check_int("mqar.make_batch", "batch_size", batch_size, 1)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"mqar.make_batch: generator must be a torch.Generator, got {generator!r}")
    n, ctx, half = cfg.num_kv_pairs, cfg.context_size, cfg.vocab_size // 2
    keys = _distinct_uniform(batch_size, 1, half, n, generator)  # [B, n]
    values = _distinct_uniform(batch_size, half, cfg.vocab_size, n, generator)  # [B, n]
    p = gap_probabilities(cfg).expand(batch_size, -1)  # [B, s]
    gaps = torch.multinomial(p, n, replacement=False, generator=generator)  # [B, n]
    query_pos = ctx + 2 * gaps  # [B, n]

    inputs = torch.zeros(batch_size, cfg.seq_len, dtype=torch.int64)  # [B, L]
    inputs[:, 0:ctx:2] = keys
    inputs[:, 1:ctx:2] = values
    inputs.scatter_(1, query_pos, keys)
    targets = torch.full_like(inputs, IGNORE_INDEX)  # [B, L]
    targets.scatter_(1, query_pos, values)
    if cfg.random_non_queries:
        # Zoology draws noise for every position and keeps it where the input is 0
        noise = torch.randint(cfg.vocab_size, inputs.shape, generator=generator)  # [B, L]
        inputs = torch.where(inputs == 0, noise, inputs)
    return Batch(inputs=inputs, targets=targets)


def _predictions(output: Tensor, targets: Tensor) -> Tensor:
    if output.shape == targets.shape:
        return output
    if output.dim() == targets.dim() + 1 and output.shape[:-1] == targets.shape:
        return output.argmax(dim=-1)
    raise ValueError(
        f"mqar.metric: output must be logits [B, L, V] or predictions [B, L] matching targets "
        f"{tuple(targets.shape)}, got {tuple(output.shape)}"
    )


def metric(output: Tensor, targets: Tensor) -> float:
    """Accuracy over the scored positions (``targets != IGNORE_INDEX``), Zoology's metric.

    A position counts as correct when the argmax of the logits (or the given prediction)
    equals its target; unscored positions are ignored entirely.

    Shapes:
        output: logits ``[B, L, V]`` or predicted ids ``[B, L]``.
        targets: ``[B, L]`` from :func:`make_batch`.
    """
    preds = _predictions(output, targets)  # [B, L]
    mask = targets != IGNORE_INDEX  # [B, L]
    scored = int(mask.sum())
    if scored == 0:
        raise ValueError("mqar.metric: targets have no scored positions (all IGNORE_INDEX)")
    return float((preds[mask] == targets[mask]).sum()) / scored


def loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy over the scored positions (Zoology's training loss).

    Shapes:
        logits: ``[B, L, V]``; targets: ``[B, L]``; returns a scalar.
    """
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


# ---- the quality bench's adapter ---------------------------------------------------------------
def _parts(mixer: str, d_model: int, num_layers: int, settings: dict) -> TaskParts:
    """A causal :class:`SequenceModel` with a short convolution and learned positions
    (Zoology's setting)."""
    cfg = parse_config("mqar", MQARConfig, settings)

    def model_fn() -> SequenceModel:
        return SequenceModel(vocab_size=cfg.vocab_size, d_model=d_model, num_layers=num_layers,
                             mixer=mixer, causal=True, max_len=cfg.seq_len, short_conv=4)  # fmt: skip

    def batch_fn(batch_size: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        b = make_batch(cfg, batch_size, g)
        return b.inputs, b.targets

    return TaskParts(model_fn, batch_fn, loss, metric, dataclasses.asdict(cfg), cfg.seq_len)


register_task(QualityTask("mqar", "Zoology's multi-query associative recall (accuracy over the "
                          "queried positions)", True, _parts, patterns=("causal-self",),
                          tokens=lambda cfg: cfg.get("seq_len"),
                          point_keys=(("seq_len", "L"), ("num_kv_pairs", "kv"))))  # fmt: skip
