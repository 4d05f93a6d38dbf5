"""In-context regression: predict ``y`` for each query ``x`` from the preceding ``(x, y)`` pairs.

The task behind the Local Linear Attention paper's in-context regression claim: Zuo et al.,
"Local Linear Attention: An Optimal Interpolation of Linear and Softmax Attention For Test-Time
Regression", 2025. https://arxiv.org/abs/2510.01450  Code: github.com/Yifei-Zuo/Flash-LLA (a
README only when checked). The stationary case is Garg et al., "What Can Transformers Learn
In-Context?", 2022 (https://arxiv.org/abs/2208.01066, github.com/dtsip/in-context-learning); the
drift law is the AR(1) model of Jiang et al. 2026 (https://arxiv.org/abs/2604.10946). The LLA
paper's exact in-context-regression generator was not available; this one is our own design.

One example has ``T = num_pairs`` pairs. ``x_t ~ N(0, I_{d_x})`` i.i.d.; each map ``W`` is
``d_y x d_x`` with i.i.d. ``N(0, 1/d_x)`` entries, so every ``y`` component has unit variance
before noise and predicting 0 scores an MSE of ``1 + noise_std²``. ``y_t = W_t x_t + noise_std·ε``,
``ε ~ N(0, I)``, where ``W_t`` depends on ``mode``:

- ``linear``: one ``W`` for the whole sequence (stationary);
- ``switching``: ``num_pieces`` independent maps, switched at ``num_pieces - 1`` distinct change
  points drawn uniformly without replacement from ``{1, ..., T-1}`` (piecewise constant in time);
- ``drift``: ``W_t = sqrt(1 - δ²)·W_{t-1} + δ·Z_t`` with ``Z_t`` fresh ``N(0, 1/d_x)`` and
  ``δ = drift``: the marginal law of ``W_t`` never changes, ``corr(W_t, W_{t+k}) = (1-δ²)^(k/2)``;
- ``locally_linear``: ``num_pieces`` maps and as many anchors ``c_k ~ N(0, I_{d_x})``; ``x``
  uses the map of its nearest anchor (``y`` is piecewise linear in ``x``: a Voronoi partition).

Token layout (width ``E = d_x + d_y + 1``, length ``L = 2T``; the last column flags queries):

- ``pair`` (default): token ``2t = [x_t, 0, 1]`` (query), token ``2t+1 = [x_t, y_t, 0]`` (pair);
- ``interleaved`` (Garg et al.): token ``2t = [x_t, 0, 1]``, token ``2t+1 = [0, y_t, 0]``.

A causal model predicts ``y_t`` at position ``2t``, which sees pairs ``0..t-1`` and ``x_t`` only.
``targets`` are token-aligned ``[B, L, d_y]``: ``y_t`` (with its noise) at ``2t`` for
``t >= min_context`` and NaN everywhere else (NaN plays the part of ``IGNORE_INDEX``);
:func:`metric` and :func:`loss` skip NaN rows.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
from torch import Tensor

from attnzoo.models.sequence import SequenceModel
from attnzoo.tasks.checks import check_float, check_int
from attnzoo.tasks.registry import QualityTask, TaskParts, parse_config, register_task

Mode = Literal["linear", "switching", "drift", "locally_linear"]
_MODES = ("linear", "switching", "drift", "locally_linear")
_LAYOUTS = ("pair", "interleaved")


@dataclasses.dataclass(frozen=True)
class RegressionConfig:
    """Parameters of the in-context regression generator.

    Attributes:
        d_x: input dimension. d_y: output dimension.
        num_pairs: ``T`` pairs per sequence (``2T`` tokens).
        mode: ``linear`` | ``switching`` | ``drift`` | ``locally_linear`` (module docstring).
        num_pieces: maps per sequence for ``switching`` / ``locally_linear`` (<= ``T`` there).
        drift: ``δ`` in ``[0, 1]`` of the ``drift`` mode's AR(1) law.
        noise_std: standard deviation of the additive output noise.
        layout: ``pair`` | ``interleaved`` token layout.
        min_context: queries ``t < min_context`` are not scored (``0 <= min_context < T``).
    """

    d_x: int = 4
    d_y: int = 1
    num_pairs: int = 32
    mode: Mode = "linear"
    num_pieces: int = 4
    drift: float = 0.2
    noise_std: float = 0.0
    layout: Literal["pair", "interleaved"] = "pair"
    min_context: int = 1

    def __post_init__(self) -> None:
        owner = "RegressionConfig"
        check_int(owner, "d_x", self.d_x, 1)
        check_int(owner, "d_y", self.d_y, 1)
        check_int(owner, "num_pairs", self.num_pairs, 2)
        check_int(owner, "num_pieces", self.num_pieces, 1)
        check_int(owner, "min_context", self.min_context, 0)
        object.__setattr__(self, "drift", check_float(owner, "drift", self.drift, 0.0, 1.0))
        noise = check_float(owner, "noise_std", self.noise_std, 0.0, math.inf)
        object.__setattr__(self, "noise_std", noise)
        self.validate()

    def validate(self) -> None:
        owner = "RegressionConfig"
        if self.mode not in _MODES:
            raise ValueError(f"{owner}: mode must be one of {_MODES}, got {self.mode!r}")
        if self.layout not in _LAYOUTS:
            raise ValueError(f"{owner}: layout must be one of {_LAYOUTS}, got {self.layout!r}")
        if self.mode in ("switching", "locally_linear") and self.num_pieces > self.num_pairs:
            raise ValueError(
                f"{owner}: num_pieces must be <= num_pairs={self.num_pairs} for mode "
                f"{self.mode!r}, got {self.num_pieces}"
            )
        if self.min_context >= self.num_pairs:
            raise ValueError(
                f"{owner}: min_context must be < num_pairs={self.num_pairs}, got {self.min_context}"
            )

    @property
    def token_dim(self) -> int:
        """Token width ``E = d_x + d_y + 1``."""
        return self.d_x + self.d_y + 1

    @property
    def seq_len(self) -> int:
        """Tokens per sequence ``L = 2T``."""
        return 2 * self.num_pairs


@dataclasses.dataclass(frozen=True)
class Batch:
    """One in-context regression batch.

    Attributes:
        inputs: tokens ``[B, L, E]`` float32 (layout in the module docstring).
        targets: ``[B, L, d_y]`` float32, ``y_t`` at scored query positions ``2t``, NaN elsewhere.
        xs: ``[B, T, d_x]``; ys: ``[B, T, d_y]`` (with noise), the raw pairs.
        weights: ``[B, T, d_y, d_x]``, the map ``W_t`` that produced pair ``t``.
        pieces: ``[B, T]`` int64: segment (``switching``) or region (``locally_linear``) id,
            else 0.
        anchors: ``[B, num_pieces, d_x]`` region anchors (``locally_linear``), else None.
    """

    inputs: Tensor  # [B, L, E]
    targets: Tensor  # [B, L, d_y]
    xs: Tensor  # [B, T, d_x]
    ys: Tensor  # [B, T, d_y]
    weights: Tensor  # [B, T, d_y, d_x]
    pieces: Tensor  # [B, T]
    anchors: Tensor | None  # [B, P, d_x]

    @property
    def mask(self) -> Tensor:
        """Scored positions ``[B, L]`` (bool)."""
        return ~self.targets[..., 0].isnan()


def _maps(cfg: RegressionConfig, shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """I.i.d. ``N(0, 1/d_x)`` maps ``[*shape, d_y, d_x]``."""
    w = torch.randn(*shape, cfg.d_y, cfg.d_x, generator=generator)
    return w / math.sqrt(cfg.d_x)


def make_batch(cfg: RegressionConfig, batch_size: int, generator: torch.Generator) -> Batch:
    """Draw ``batch_size`` sequences; identical for identical generator states.

    Shapes:
        see :class:`Batch`: ``L = 2 * cfg.num_pairs``, ``E = cfg.d_x + cfg.d_y + 1``.
    """
    check_int("regression.make_batch", "batch_size", batch_size, 1)
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"regression.make_batch: generator must be a torch.Generator, got {generator!r}"
        )
    bsz, n, p = batch_size, cfg.num_pairs, cfg.num_pieces
    xs = torch.randn(bsz, n, cfg.d_x, generator=generator)  # [B, T, d_x]
    pieces = torch.zeros(bsz, n, dtype=torch.int64)  # [B, T]
    anchors = None
    if cfg.mode == "linear":
        weights = _maps(cfg, (bsz, 1), generator).expand(bsz, n, -1, -1)  # [B, T, d_y, d_x]
    elif cfg.mode == "drift":
        w = _maps(cfg, (bsz, n), generator)  # [B, T, d_y, d_x]; fresh innovations Z_t
        keep, step = math.sqrt(1.0 - cfg.drift**2), cfg.drift
        rows = [w[:, 0]]
        for t in range(1, n):
            rows.append(keep * rows[-1] + step * w[:, t])
        weights = torch.stack(rows, dim=1)  # [B, T, d_y, d_x]
    else:
        maps = _maps(cfg, (bsz, p), generator)  # [B, P, d_y, d_x]
        if cfg.mode == "switching":
            ones = torch.ones(bsz, n - 1, dtype=torch.float64)
            if p > 1:
                cuts = torch.multinomial(ones, p - 1, replacement=False, generator=generator) + 1
                # segment id of pair t = number of change points <= t
                pieces = (cuts[:, None, :] <= torch.arange(n)[None, :, None]).sum(-1)  # [B, T]
        else:
            anchors = torch.randn(bsz, p, cfg.d_x, generator=generator)  # [B, P, d_x]
            pieces = torch.cdist(xs, anchors).argmin(dim=-1)  # [B, T]
        idx = pieces[..., None, None].expand(-1, -1, cfg.d_y, cfg.d_x)
        weights = torch.gather(maps, 1, idx)  # [B, T, d_y, d_x]
    ys = torch.einsum("btyx,btx->bty", weights, xs)  # [B, T, d_y]
    if cfg.noise_std > 0:
        ys = ys + cfg.noise_std * torch.randn(bsz, n, cfg.d_y, generator=generator)

    inputs = torch.zeros(bsz, cfg.seq_len, cfg.token_dim)  # [B, L, E]
    inputs[:, 0::2, : cfg.d_x] = xs
    inputs[:, 0::2, -1] = 1.0
    if cfg.layout == "pair":
        inputs[:, 1::2, : cfg.d_x] = xs
    inputs[:, 1::2, cfg.d_x : cfg.d_x + cfg.d_y] = ys
    targets = torch.full((bsz, cfg.seq_len, cfg.d_y), float("nan"))  # [B, L, d_y]
    targets[:, 2 * cfg.min_context :: 2] = ys[:, cfg.min_context :]
    return Batch(inputs, targets, xs, ys, weights.contiguous(), pieces, anchors)


def _scored(output: Tensor, targets: Tensor, owner: str) -> tuple[Tensor, Tensor]:
    if output.shape != targets.shape:
        raise ValueError(
            f"regression.{owner}: output must match targets {tuple(targets.shape)} "
            f"([B, L, d_y], token-aligned), got {tuple(output.shape)}"
        )
    mask = ~targets[..., 0].isnan()  # [B, L]
    if not bool(mask.any()):
        raise ValueError(f"regression.{owner}: targets have no scored positions (all NaN)")
    return output[mask], targets[mask]  # [count, d_y] each


def loss(output: Tensor, targets: Tensor) -> Tensor:
    """Mean squared error over scored positions and output components (differentiable).

    Shapes:
        output, targets: ``[B, L, d_y]``; returns a scalar.
    """
    pred, want = _scored(output, targets, "loss")
    return (pred - want).pow(2).mean()


def metric(output: Tensor, targets: Tensor) -> float:
    """MSE per output component over the scored queries (lower is better).

    Maps are scaled so predicting 0 scores about ``1 + noise_std²`` and the noise floor is
    ``noise_std²``; the value is therefore already normalised like Garg et al.'s ``MSE / d``.

    Shapes:
        output, targets: ``[B, L, d_y]`` (token-aligned model outputs, read at positions ``2t``).
    """
    with torch.no_grad():
        return float(loss(output, targets))


def ridge_predictions(batch: Batch, lam: float = 1e-6, window: int | None = None) -> Tensor:
    """A non-learned reference: per query, ridge regression on its preceding pairs.

    Query ``t`` fits ``W`` on pairs ``max(0, t - window) .. t-1`` (all of them when ``window`` is
    None) by ``argmin Σ ||y - W x||² + lam ||W||²`` and predicts ``W x_t``; 0 when there is no
    pair. Returned token-aligned like ``targets`` (values at positions ``2t``, 0 elsewhere).

    Shapes:
        returns ``[B, L, d_y]`` float32.
    """
    xs, ys = batch.xs.double(), batch.ys.double()  # [B, T, d_x], [B, T, d_y]
    bsz, n, d_x = xs.shape
    out = torch.zeros(bsz, 2 * n, ys.shape[-1], dtype=torch.float64)  # [B, L, d_y]
    eye = torch.eye(d_x, dtype=torch.float64)
    for t in range(1, n):
        s = 0 if window is None else max(0, t - window)
        x, y = xs[:, s:t], ys[:, s:t]  # [B, c, d_x], [B, c, d_y]
        gram = x.transpose(1, 2) @ x + lam * eye  # [B, d_x, d_x]
        w = torch.linalg.solve(gram, x.transpose(1, 2) @ y)  # [B, d_x, d_y]
        out[:, 2 * t] = (xs[:, t, None, :] @ w)[:, 0]
    return out.float()


# ---- the quality bench's adapter ---------------------------------------------------------------
def _parts(mixer: str, d_model: int, num_layers: int, settings: dict) -> TaskParts:
    """In-context regression: continuous rows through a linear input map, a causal model, the
    task's MSE at the query rows (lower is better)."""
    cfg = parse_config("regression", RegressionConfig, settings)
    probe = make_batch(cfg, 1, torch.Generator().manual_seed(0))
    L, E = probe.inputs.shape[1:]

    def model_fn() -> SequenceModel:
        return SequenceModel(vocab_size=1, input_dim=E, d_model=d_model, num_layers=num_layers,
                             mixer=mixer, causal=True, num_outputs=cfg.d_y, max_len=L)  # fmt: skip

    def batch_fn(batch_size: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        b = make_batch(cfg, batch_size, g)
        return b.inputs, b.targets

    return TaskParts(model_fn, batch_fn, loss, metric, dataclasses.asdict(cfg), L)


# tokens per layer: a query and a pair token per example
register_task(QualityTask("regression", "in-context (piecewise / locally) linear regression "
                          "(MSE at the query rows; lower is better)", True, _parts, metric="MSE",
                          maximize=False, patterns=("causal-self",), fmt=".3g", bounded=False,
                          tokens=lambda cfg: 2 * cfg["num_pairs"] if "num_pairs" in cfg else None))  # fmt: skip
