"""The pointer network (Vinyals et al.) the pointer tasks train, and their quality-bench adapter.

**Pointer tasks** (``pointer-sort``, ``pointer-hull``; :mod:`attnzoo.tasks.pointer`) train a
:class:`PointerNet` with teacher forcing; their metric is *greedy* decoding (the model's own
choices fed back; for hull the inputs already chosen are masked, sorting decodes unconstrained,
see :class:`PointerNet`) scored by exact match on held-out batches of the training
range ``train_n``, and two extra evaluations on the final model: the same greedy exact match on
``eval_examples`` (setting, default 512) fresh ``train_n`` examples and as many of the longer
``test_n`` (the generalisation test), named ``greedy_n{lo}_{hi}``; their generator is seeded
with 12345, so every model is scored on the same examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnzoo.models.sequence import SequenceModel
from attnzoo.registry import get_spec
from attnzoo.tasks import pointer
from attnzoo.tasks.registry import (
    QualityTask,
    TaskParts,
    field_names,
    register_task,
    split_settings,
)

#: kernel of the decoder's causal depthwise convolution: its only source of order
DECODER_CONV = 4


class PointerNet(nn.Module):
    """A pointer network whose encoder and decoder are blocks of one registered 1-D mixer.

    Encoder: :class:`SequenceModel` blocks, non-causal, over the ``N`` padded inputs, each input
    ``[features, is_real]`` (the flag tells padding apart; the mixers take no key mask). No
    position embedding: the inputs are a set (a sort's order comes from the values alone).
    Decoder: causal blocks over ``[start, e_{p_0}, e_{p_1}, ...]`` (a learned start vector, then
    the encoder states of the inputs already pointed at; zeros after the end token / past
    ``n``). It has no absolute positions either: a causal depthwise convolution (kernel
    :data:`DECODER_CONV`) before each mixer gives it the last choices, at any length, so the
    longer ``test_n`` needs nothing learned per step. Head: :class:`attnzoo.tasks.pointer.
    PointerHead` over (decoder states, encoder states); padding is always masked.

    ``mask_chosen``: also mask the inputs already pointed at (in training, the exclusion mask;
    in decoding, the model's own choices). Sorting trains and decodes *without* it, as Vinyals
    et al. did (their outputs are unconstrained): with it, sorting reduces to "point at the
    smallest input left", which any encoder whose score happens to be monotone in the value
    solves untrained (untrained d=64 softmax/linear/sigmoid nets scored exact match 1.0, or 0.0
    for the reverse order, on n = 5..10 and 11..20). Hull keeps it (an untrained net scores ~0).

    Args:
        mixer: a registered mixer with both ``noncausal-self`` and ``causal-self`` patterns.
        d_model: width ``D``. num_layers: blocks of the encoder and of the decoder.
        feature_dim: features ``F`` per input (1 for sorting, 2 for hull points).
        end_slot: give the head the end-token slot (hull).
        mask_chosen: mask inputs already chosen (see above).
    """

    def __init__(
        self,
        mixer: str,
        d_model: int,
        num_layers: int,
        feature_dim: int,
        end_slot: bool,
        mask_chosen: bool = True,
    ) -> None:
        super().__init__()
        spec = get_spec(mixer)
        need = ("noncausal-self", "causal-self")
        lacks = [p for p in need if p not in spec.patterns]
        if spec.layout != "tokens" or lacks:
            what = (f"the tokens layout (it is {spec.layout})" if spec.layout != "tokens"
                    else f"the {' and '.join(lacks)} pattern")  # fmt: skip
            raise ValueError(
                f"PointerNet: mixer {mixer!r} lacks {what}; the encoder needs a tokens noncausal-self "
                f"mixer and the decoder causal-self (it supports {', '.join(spec.patterns)})"
            )
        common = {"vocab_size": 1, "d_model": d_model, "num_layers": num_layers, "mixer": mixer,
                  "num_outputs": d_model, "positions": False}  # fmt: skip
        self.encoder = SequenceModel(input_dim=feature_dim + 1, causal=False, **common)
        self.decoder = SequenceModel(input_dim=d_model, causal=True, short_conv=DECODER_CONV,
                                     **common)  # fmt: skip
        self.start = nn.Parameter(torch.randn(d_model) * d_model**-0.5)
        self.head = pointer.PointerHead(d_model, end_slot=end_slot)
        self.end_slot = end_slot
        self.mask_chosen = mask_chosen

    def encode(self, batch: pointer.Batch) -> Tensor:
        """Shapes: inputs ``[B, N, F]`` -> encoder states ``[B, N, D]``."""
        flag = batch.input_mask[..., None].to(batch.inputs.dtype)  # [B, N, 1]
        return self.encoder(torch.cat([batch.inputs, flag], dim=-1))  # [B, N, D]

    def _feed(self, enc: Tensor, pointers: Tensor) -> Tensor:
        """Encoder states of ``pointers`` ``[B, m]``; zeros for END / IGNORE_INDEX ``[B, m, D]``."""
        n = enc.shape[1]
        ok = (pointers >= 0) & (pointers < n)  # [B, m]
        idx = pointers.clamp(0, n - 1)[..., None].expand(-1, -1, enc.shape[-1])  # [B, m, D]
        return enc.gather(1, idx) * ok[..., None]

    def _decode(self, enc: Tensor, prev: Tensor) -> Tensor:
        """Decoder states for the steps after ``[start, prev...]``: ``[B, m + 1, D]``."""
        start = self.start.expand(enc.shape[0], 1, -1)  # [B, 1, D]
        return self.decoder(torch.cat([start, self._feed(enc, prev)], dim=1))

    def forward(self, batch: pointer.Batch) -> Tensor:
        """Teacher-forced pointer logits.

        Shapes:
            batch: ``inputs [B, N, F]``, ``targets [B, M]``, ``exclude [B, M, N]``; returns
            ``[B, M, N]`` (``[B, M, N + 1]`` with the end slot).
        """
        enc = self.encode(batch)  # [B, N, D]
        dec = self._decode(enc, batch.targets[:, :-1])  # [B, M, D]
        exclude = batch.exclude if self.mask_chosen else ~batch.input_mask  # [B, M, N] / [B, N]
        return self.head(enc, dec, exclude)

    @torch.no_grad()
    def greedy(self, batch: pointer.Batch) -> Tensor:
        """Greedy decoding: at each step the best-scoring input (padding never; with
        ``mask_chosen`` none chosen before); a row stops after ``END`` (hull) or after ``n``
        pointers (sorting). The decoder is re-run on the growing prefix (exact, ``M`` forwards
        of at most ``M`` tokens).

        Shapes:
            returns ``[B, M]`` int64 pointers like ``batch.targets``: ``END = N`` for hull,
            ``IGNORE_INDEX`` after a row stopped.
        """
        enc = self.encode(batch)  # [B, N, D]
        bsz, n = batch.input_mask.shape
        steps = batch.targets.shape[1]
        chosen = ~batch.input_mask  # [B, N]
        preds = torch.full((bsz, steps), pointer.IGNORE_INDEX, dtype=torch.int64)  # [B, M]
        active = torch.ones(bsz, dtype=torch.bool)  # [B]
        prev = preds[:, :0]  # [B, 0]
        for i in range(steps):
            if not self.end_slot:
                active = active & (batch.lengths > i)  # n pointers per row
            if not bool(active.any()):
                break
            dec = self._decode(enc, prev)[:, -1:]  # [B, 1, D]
            p = self.head(enc, dec, chosen[:, None])[:, 0].argmax(dim=-1)  # [B]
            p = torch.where(active, p, pointer.IGNORE_INDEX)
            preds[:, i] = p
            picked = active & (p < n)  # [B]
            if self.mask_chosen:
                chosen = chosen | (F.one_hot(p.clamp(0, n - 1), n).bool() & picked[:, None])
            active = picked
            prev = preds[:, : i + 1]
        return preds


def greedy_accuracy(
    model: nn.Module, batches: Sequence[pointer.Batch], per: str = "sequence"
) -> float:
    """Accuracy of greedy decoding: exact match (:func:`attnzoo.tasks.pointer.metric`,
    ``per="sequence"``) weighted by batch size, or the fraction of right pointers
    (:func:`~attnzoo.tasks.pointer.token_accuracy`, ``per="pointer"``) weighted by their count."""
    if per == "sequence":
        hits = sum(pointer.metric(model.greedy(b), b.targets) * len(b.lengths) for b in batches)
        return hits / sum(len(b.lengths) for b in batches)
    if per != "pointer":
        raise ValueError(f"greedy_accuracy: per must be 'sequence' or 'pointer', got {per!r}")
    scored = [int((b.targets != pointer.IGNORE_INDEX).sum()) for b in batches]
    hits = sum(pointer.token_accuracy(model.greedy(b), b.targets) * n
               for b, n in zip(batches, scored, strict=True))  # fmt: skip
    return hits / sum(scored)


def _pointer(kind: str) -> Callable[[str, int, int, dict[str, Any]], TaskParts]:
    owner = f"pointer-{kind}"

    def build(mixer: str, d_model: int, num_layers: int, settings: dict[str, Any]) -> TaskParts:
        fields = [f for f in field_names(pointer.PointerConfig) if f != "task"]
        cfg_kw, opt = split_settings(owner, fields, settings, {"eval_examples": 512})
        cfg = pointer.PointerConfig(task=kind, **cfg_kw)  # type: ignore[arg-type]
        count = opt["eval_examples"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{owner}: eval_examples must be an int >= 1, got {count!r}")

        def model_fn() -> nn.Module:
            return PointerNet(mixer, d_model, num_layers, cfg.feature_dim, kind == "hull",
                              mask_chosen=kind == "hull")  # fmt: skip

        def batch_fn(batch_size: int, g: torch.Generator) -> tuple[pointer.Batch, Tensor]:
            b = pointer.make_batch(cfg, batch_size, g)
            return b, b.targets

        def fixed(split: pointer.Split, per: str) -> Callable[[nn.Module], float]:
            def evaluate(model: nn.Module) -> float:
                g = torch.Generator().manual_seed(12345)  # the same examples for every model
                sizes = [min(128, count - i) for i in range(0, count, 128)]
                batches = [pointer.make_batch(cfg, s, g, split) for s in sizes]
                return greedy_accuracy(model, batches, per)

            return evaluate

        # exact match (the paper's accuracy) and the fraction of right pointers, which shows how
        # gracefully longer inputs degrade when whole sequences stop being exact
        ranges = (("train", cfg.train_n), ("test", cfg.test_n))
        evals = {f"greedy_n{lo}_{hi}": fixed(split, "sequence") for split, (lo, hi) in ranges}
        evals |= {f"pointers_n{lo}_{hi}": fixed(split, "pointer") for split, (lo, hi) in ranges}
        return TaskParts(model_fn, batch_fn, pointer.loss, pointer.metric,
                         {**dataclasses.asdict(cfg), "eval_examples": count}, None,
                         predict_fn=lambda model, b: model.greedy(b), extra_evals=evals)  # fmt: skip

    return build


def _tokens(cfg: dict[str, Any]) -> int | None:
    """The encoder's tokens: the longest training input."""
    return int(max(cfg["train_n"])) if "train_n" in cfg else None


_INFO = {"metric": "greedy exact match", "patterns": ("noncausal-self", "causal-self"),
         "tokens": _tokens}  # fmt: skip
register_task(QualityTask("pointer-sort", "pointer network sorting n = 5..10 numbers (greedy "
                          "exact match; extra: longer n)", False, _pointer("sort"), **_INFO))  # fmt: skip
register_task(QualityTask("pointer-hull", "pointer network planar convex hull of n = 5..10 points "
                          "(greedy exact match; extra: longer n)", False, _pointer("hull"), **_INFO))  # fmt: skip
