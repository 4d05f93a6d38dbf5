"""A small token-sequence model that takes any registered 1-D mixer (the quality bench's model).

``tokens [B, T] -> embed (+ learned positions) -> N x [x + mixer(norm(x)); x + mlp(norm(x))]
-> norm -> head``. The head is per position (``[B, T, vocab_or_classes]``, a language-model /
token-labelling head, as Zoology's MQAR models) or pooled (``pool="mean"`` / ``"last"``:
``[B, classes]``, a sequence classifier as for ListOps).

Zoology's attention baselines give the model position information; here that is a learned
absolute position embedding (``max_len`` positions) or none (``positions=False``) for mixers
that carry order themselves (recurrences, decays). An optional short causal depthwise
convolution before each mixer (``short_conv``, Zoology's ``BaseConv`` idea) lets every mixer see
the previous tokens directly, which associative recall needs to bind a key to the next token.

    model = SequenceModel(vocab_size=64, d_model=64, num_layers=2, mixer="gla", causal=True)
    logits = model(torch.randint(0, 64, (8, 128)))  # [8, 128, 64]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnzoo.config import suggest
from attnzoo.registry import build_mixer, get_spec, list_mixers

POOLS = ("none", "mean", "last")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"SequenceModel: {name} must be an int >= {minimum}, got {value!r}")


class ShortConv(nn.Module):
    """Causal depthwise convolution over time, kernel ``k``: ``[B, T, D] -> [B, T, D]``."""

    def __init__(self, dim: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.conv = nn.Conv1d(dim, dim, k, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        y = F.pad(x.transpose(1, 2), (self.k - 1, 0))  # [B, D, T + k - 1]: past only
        return self.conv(y).transpose(1, 2)


class Block(nn.Module):
    def __init__(self, d_model: int, mixer: nn.Module, short_conv: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.conv = ShortConv(d_model, short_conv) if short_conv > 1 else None
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(d_model)
        hidden = max(1, int(d_model * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        if self.conv is not None:
            h = h + self.conv(h)
        x = x + self.mixer(h)
        return x + self.mlp(self.norm2(x))


class SequenceModel(nn.Module):
    """Embedding, ``num_layers`` pre-norm blocks around a registered 1-D mixer, and a head.

    Args:
        vocab_size: input tokens ``0 .. vocab_size - 1``.
        d_model: width.
        num_layers: blocks.
        mixer: a registered 1-D mixer name; ``causal`` picks its causal-self or
            noncausal-self pattern (the mixer must support it).
        causal: causal self mixing (language-model style) or not.
        num_outputs: head width; ``None`` means ``vocab_size`` (next-token / token labels).
        pool: ``"none"`` (per-position outputs ``[B, T, num_outputs]``), ``"mean"`` or
            ``"last"`` (one output per sequence ``[B, num_outputs]``).
        max_len: positions of the learned position embedding; ``positions=False`` drops it.
        short_conv: kernel of a causal depthwise conv before each mixer (``0``/``1``: none).
        mlp_ratio: MLP hidden width over ``d_model``.
        mixer_kwargs: extra config for the mixer (not ``d_model``/``causal``).
        input_dim: continuous inputs ``[B, T, input_dim]`` through a linear map instead of
            token ids through an embedding (``vocab_size`` then only sizes the default head).
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        d_model: int,
        num_layers: int,
        mixer: str,
        causal: bool = True,
        num_outputs: int | None = None,
        pool: str = "none",
        max_len: int = 2048,
        positions: bool = True,
        short_conv: int = 0,
        mlp_ratio: float = 2.0,
        mixer_kwargs: Mapping[str, Any] | None = None,
        input_dim: int | None = None,
    ) -> None:
        super().__init__()
        _check_int("vocab_size", vocab_size, 1)
        _check_int("d_model", d_model, 1)
        _check_int("num_layers", num_layers, 1)
        _check_int("max_len", max_len, 1)
        _check_int("short_conv", short_conv, 0)
        if num_outputs is not None:
            _check_int("num_outputs", num_outputs, 1)
        if input_dim is not None:
            _check_int("input_dim", input_dim, 1)
        if pool not in POOLS:
            raise ValueError(
                f"SequenceModel: pool must be one of {', '.join(POOLS)}, got {pool!r}"
                f"{suggest(str(pool), POOLS)}"
            )
        if not isinstance(causal, bool):
            raise TypeError(f"SequenceModel: causal must be a bool, got {causal!r}")
        names = [s.name for s in list_mixers(dims=1)]
        if mixer not in names:
            raise ValueError(
                f"SequenceModel: mixer must be a registered 1-D mixer, got {mixer!r}"
                f"{suggest(str(mixer), names)}; 1-D mixers: {', '.join(names)}"
            )
        pattern = "causal-self" if causal else "noncausal-self"
        spec = get_spec(mixer)
        if pattern not in spec.patterns:
            raise ValueError(
                f"SequenceModel: mixer {mixer!r} does not support {pattern} (causal={causal}); "
                f"it supports {', '.join(spec.patterns)}"
            )
        kw = dict(mixer_kwargs or {})
        for key in ("d_model", "causal"):
            if key in kw:
                raise TypeError(
                    f"SequenceModel: mixer_kwargs must not set {key!r} (the model does)"
                )
        self.max_len, self.pool, self.causal = max_len, pool, causal
        self.input_dim = input_dim
        self.embed = (
            nn.Embedding(vocab_size, d_model)
            if input_dim is None
            else nn.Linear(input_dim, d_model)
        )
        self.pos = nn.Embedding(max_len, d_model) if positions else None
        self.blocks = nn.ModuleList(
            Block(
                d_model,
                build_mixer(mixer, d_model=d_model, causal=causal, **kw),
                short_conv,
                mlp_ratio,
            )  # fmt: skip
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_outputs if num_outputs is not None else vocab_size)
        self.vocab_size = vocab_size

    def forward(self, tokens: Tensor) -> Tensor:
        """Shapes: tokens ``[B, T]`` (int; or ``[B, T, input_dim]`` float with ``input_dim``)
        -> ``[B, T, out]`` (pool none) or ``[B, out]``."""
        if self.input_dim is not None:
            if (
                not isinstance(tokens, Tensor)
                or tokens.dim() != 3
                or tokens.shape[-1] != self.input_dim
            ):
                raise ValueError(
                    f"SequenceModel: inputs must be a float tensor [B, T, {self.input_dim}], got "
                    f"{tuple(getattr(tokens, 'shape', ()))}"
                )
        elif not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.is_floating_point():
            raise ValueError(
                "SequenceModel: tokens must be an integer tensor [B, T], got "
                f"{getattr(tokens, 'dtype', type(tokens).__name__)} {tuple(getattr(tokens, 'shape', ()))}"
            )
        elif tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(
                f"SequenceModel: tokens must be in [0, vocab_size={self.vocab_size}), got values "
                f"in [{int(tokens.min())}, {int(tokens.max())}]"
            )
        T = tokens.shape[1]
        if self.pos is not None and T > self.max_len:
            raise ValueError(f"SequenceModel: sequence length {T} > max_len={self.max_len}")
        x = self.embed(tokens)  # [B, T, D]
        if self.pos is not None:
            x = x + self.pos(torch.arange(T, device=tokens.device))
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        if self.pool == "mean":
            x = x.mean(dim=1)
        elif self.pool == "last":
            x = x[:, -1]
        return self.head(x)
