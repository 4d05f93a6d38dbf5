"""ListOps: classify the value of a nested MIN/MAX/MED/SUM_MOD expression, as in LRA.

Tay et al., "Long Range Arena: A Benchmark for Efficient Transformers", ICLR 2021.
https://arxiv.org/abs/2011.04006  Code: github.com/google-research/long-range-arena
(``lra_benchmarks/data/listops.py`` generates, ``lra_benchmarks/listops/input_pipeline.py``
tokenises). The task itself is from Nangia & Bowman, "ListOps", 2018.

Generator (LRA's ``generate_tree``, root at depth 1): a node at ``depth < max_depth`` is an
operator with probability 0.25, otherwise a leaf; at ``depth == max_depth`` it is always a
leaf. A leaf is a digit uniform in 0..9. An operator draws its argument count uniformly from
``2..max_args``, generates that many children at ``depth + 1``, then picks its operator uniformly
from MIN, MAX, MED, SUM_MOD (``[MIN``, ``[MAX``, ``[MED``, ``[SM``). Its tokens are the operator,
its children's tokens, then ``]``. So operators nest at most ``max_depth - 1`` deep.
Length = number of tokens (LRA's ``length``; its parentheses are stripped by its input
pipeline). A tree is kept only when ``min_length < length < max_length`` (strict, as LRA),
otherwise redrawn. Values: MIN/MAX as usual; MED is ``int(numpy.median(args))``, i.e. the
middle element, or for an even count the floor of the mean of the two middle ones; SUM_MOD is
``sum(args) % 10``. The label is the root's value (10 classes).

Tokens map to the fixed vocabulary :data:`VOCAB` (pad = 0); sequences are right-padded to
``max_length`` (LRA pads to its ``max_length`` too).

Scaled down from LRA (``max_depth=10, max_args=10, min_length=500, max_length=2000``): the
defaults are ``max_depth=4, max_args=10, min_length=16, max_length=64`` (same min/max ratio as
LRA), so sequences are 17..63 tokens (mean ~37) and trees are rejected ~87% of the time.
Differences: LRA deduplicates its fixed 100k-example dataset; here each batch is drawn fresh
(duplicates possible, no fixed train/test split - use separate generator seeds). Randomness
comes only from the given ``torch.Generator`` (uniforms drawn in chunks).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from attnzoo.models.sequence import SequenceModel
from attnzoo.tasks.checks import check_int
from attnzoo.tasks.registry import QualityTask, TaskParts, parse_config, register_task

OPERATORS: tuple[str, ...] = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
PAD = "<pad>"
#: Fixed vocabulary: id 0 is padding, ids 1..10 are the digits 0..9, then operators and ``]``.
VOCAB: tuple[str, ...] = (PAD, *(str(d) for d in range(10)), *OPERATORS, END)
PAD_ID = 0
VOCAB_SIZE = len(VOCAB)
NUM_CLASSES = 10
#: LRA's ``VALUE_P``: below ``max_depth`` a node is an operator when ``uniform() <= 0.25``.
OPERATOR_P = 0.25

_DIGIT_ID = 1  # id of digit 0
_OP_ID = {op: VOCAB.index(op) for op in OPERATORS}
_END_ID = VOCAB.index(END)


@dataclasses.dataclass(frozen=True)
class ListOpsConfig:
    """Parameters of the ListOps generator (LRA's flag names).

    Attributes:
        max_depth: tree depth counting the leaves (LRA's ``max_depth``); operators nest at most
            ``max_depth - 1`` deep. >= 2.
        max_args: most arguments per operator (at least 2 are drawn). >= 2.
        min_length: keep trees with more than this many tokens. >= 0.
        max_length: keep trees with fewer than this many tokens; also the padded length ``T``.
    """

    max_depth: int = 4
    max_args: int = 10
    min_length: int = 16
    max_length: int = 64

    def __post_init__(self) -> None:
        owner = "ListOpsConfig"
        check_int(owner, "max_depth", self.max_depth, 2)
        check_int(owner, "max_args", self.max_args, 2)
        check_int(owner, "min_length", self.min_length, 0)
        # the shortest operator expression is "[OP d d ]", 4 tokens
        check_int(owner, "max_length", self.max_length, 5)
        self.validate()

    def validate(self) -> None:
        owner = "ListOpsConfig"
        if self.max_length <= self.min_length + 1:
            raise ValueError(
                f"{owner}: max_length must be > min_length + 1 = {self.min_length + 1} "
                f"(lengths are kept when min_length < length < max_length), got {self.max_length}"
            )
        if self.min_length >= self.longest_tree():
            raise ValueError(
                f"{owner}: min_length must be < {self.longest_tree()}, the longest tree "
                f"max_depth={self.max_depth}, max_args={self.max_args} can produce; "
                f"got {self.min_length}"
            )

    def longest_tree(self) -> int:
        """Token count of the largest possible tree (every node a full operator)."""
        length = 1
        for _ in range(self.max_depth - 1):
            length = 2 + self.max_args * length
        return length


@dataclasses.dataclass(frozen=True)
class Batch:
    """One ListOps batch.

    Attributes:
        inputs: token ids ``[B, T]`` (int64), ``T = max_length``, right-padded with ``PAD_ID``.
        targets: the expression values ``[B]`` (int64, 0..9).
        mask: real (non-pad) tokens ``[B, T]`` (bool).
    """

    inputs: Tensor  # [B, T]
    targets: Tensor  # [B]
    mask: Tensor  # [B, T]

    @property
    def lengths(self) -> Tensor:
        """Token count per example ``[B]`` (int64)."""
        return self.mask.sum(dim=1)


class _Uniforms:
    """Uniform [0, 1) floats from a torch.Generator, drawn in chunks."""

    def __init__(self, generator: torch.Generator, chunk: int = 4096) -> None:
        self.generator, self.chunk = generator, chunk
        self.buffer: list[float] = []
        self.pos = 0

    def next(self) -> float:
        if self.pos == len(self.buffer):
            draw = torch.rand(self.chunk, dtype=torch.float64, generator=self.generator)
            self.buffer, self.pos = draw.tolist(), 0
        self.pos += 1
        return self.buffer[self.pos - 1]

    def below(self, n: int) -> int:
        """Uniform integer in ``[0, n)`` (clamped: ``u * n`` can round up to ``n``)."""
        return min(int(self.next() * n), n - 1)


class _TooLong(Exception):
    pass


def _median(args: list[int]) -> int:
    s = sorted(args)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2


def _apply(op: str, args: list[int]) -> int:
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        return _median(args)
    return sum(args) % 10


def _grow(cfg: ListOpsConfig, u: _Uniforms, depth: int, out: list[int]) -> int:
    """Append one subtree's token ids to ``out``; return its value. Raises _TooLong early."""
    if len(out) >= cfg.max_length - 1:
        # any further token would make the tree too long: it will be rejected anyway
        raise _TooLong
    is_op = depth < cfg.max_depth and u.next() <= OPERATOR_P
    if not is_op:
        value = u.below(10)
        out.append(_DIGIT_ID + value)
        return value
    num_args = 2 + u.below(cfg.max_args - 1)
    head = len(out)
    out.append(PAD_ID)  # placeholder: LRA picks the operator after the children
    args = [_grow(cfg, u, depth + 1, out) for _ in range(num_args)]
    op = OPERATORS[u.below(len(OPERATORS))]
    out[head] = _OP_ID[op]
    out.append(_END_ID)
    return _apply(op, args)


def _sample_tree(cfg: ListOpsConfig, u: _Uniforms, max_tries: int) -> tuple[list[int], int]:
    for _ in range(max_tries):
        tokens: list[int] = []
        try:
            value = _grow(cfg, u, 1, tokens)
        except _TooLong:
            continue
        if cfg.min_length < len(tokens) < cfg.max_length:
            return tokens, value
    raise RuntimeError(
        f"listops.make_batch: no tree with {cfg.min_length} < length < {cfg.max_length} in "
        f"{max_tries} draws for {cfg}; widen the length bounds or raise max_depth/max_args"
    )


def make_batch(
    cfg: ListOpsConfig, batch_size: int, generator: torch.Generator, max_tries: int = 100_000
) -> Batch:
    """Draw ``batch_size`` ListOps examples; identical for identical generator states.

    Args:
        max_tries: rejection-sampling draws allowed per example before giving up.

    Shapes:
        inputs, mask: ``[batch_size, cfg.max_length]``; targets: ``[batch_size]``.
    """
    check_int("listops.make_batch", "batch_size", batch_size, 1)
    check_int("listops.make_batch", "max_tries", max_tries, 1)
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"listops.make_batch: generator must be a torch.Generator, got {generator!r}"
        )
    u = _Uniforms(generator)
    inputs = torch.full((batch_size, cfg.max_length), PAD_ID, dtype=torch.int64)  # [B, T]
    targets = torch.empty(batch_size, dtype=torch.int64)  # [B]
    for b in range(batch_size):
        tokens, value = _sample_tree(cfg, u, max_tries)
        inputs[b, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
        targets[b] = value
    return Batch(inputs=inputs, targets=targets, mask=inputs != PAD_ID)


def decode(ids: Tensor) -> str:
    """Space-separated tokens of one example ``[T]``, padding dropped (e.g. ``[MAX 2 9 ]``)."""
    return " ".join(VOCAB[i] for i in ids.tolist() if i != PAD_ID)


def metric(output: Tensor, targets: Tensor) -> float:
    """Classification accuracy: argmax of the logits (or the given prediction) equals the value.

    Shapes:
        output: logits ``[B, 10]`` or predicted classes ``[B]``; targets: ``[B]``.
    """
    if output.shape == targets.shape:
        preds = output
    elif output.dim() == 2 and output.shape[0] == targets.shape[0]:
        preds = output.argmax(dim=-1)  # [B]
    else:
        raise ValueError(
            f"listops.metric: output must be logits [B, {NUM_CLASSES}] or predictions [B] "
            f"matching targets {tuple(targets.shape)}, got {tuple(output.shape)}"
        )
    if targets.numel() == 0:
        raise ValueError("listops.metric: empty batch")
    return float((preds == targets).float().mean())


def loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of the class logits.

    Shapes:
        logits: ``[B, 10]``; targets: ``[B]``; returns a scalar.
    """
    return F.cross_entropy(logits, targets)


# ---- the quality bench's adapter ---------------------------------------------------------------
def _parts(mixer: str, d_model: int, num_layers: int, settings: dict) -> TaskParts:
    """A non-causal sequence classifier; mean pooling runs over the right padding too (the pad
    token has its own embedding, so the model can learn to discount it)."""
    cfg = parse_config("listops", ListOpsConfig, settings)

    def model_fn() -> SequenceModel:
        return SequenceModel(vocab_size=VOCAB_SIZE, d_model=d_model, num_layers=num_layers,
                             mixer=mixer, causal=False, num_outputs=NUM_CLASSES, pool="mean",
                             max_len=cfg.max_length)  # fmt: skip

    def batch_fn(batch_size: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        b = make_batch(cfg, batch_size, g)
        return b.inputs, b.targets

    return TaskParts(model_fn, batch_fn, loss, metric, dataclasses.asdict(cfg), cfg.max_length)


register_task(QualityTask("listops", "LRA's ListOps, scaled down (accuracy of the 10-way value)",
                          False, _parts, patterns=("noncausal-self",),
                          tokens=lambda cfg: cfg.get("max_length")))  # fmt: skip
