"""Sparsifiner (S-SPARSIFINER): instance-dependent sparse attention from a low-rank predictor.

Wei, Ye, Raghavan, Fathi, Ye, Rhodes and Ji, "Sparsifiner: Learning Sparse Instance-Dependent
Attention for Efficient Vision Transformers", CVPR 2023. https://arxiv.org/abs/2303.13755
Code: https://github.com/lim142857/Sparsifiner (``src/models/sparsifiner.py``: ``MaskPredictor``,
``Attention``; ``src/losses.py``; ``sparsifiner_default_config.yaml``). Peer: timm ``Attention``
at ``keep_rate=1`` (copied ``qkv``/``proj`` weights; the parameter names are timm's).

A ViT token mixer over ``N`` tokens. Per head, with ``q, k, v [B, N, H, K]``:

1. the connectivity predictor (:func:`attnzoo.ops.sparsifiner.approx_attention`):
   ``q' = q W_cq``, ``k' = k W_ck`` (``K -> c = K // reduce_c``, one ``Linear`` with bias shared
   by the heads, as official); ``k'' = k'^T P[:N, :r]``; ``coef = softmax(q' k'' · H^-0.5)``
   kept to its ``coef_topk`` largest entries per row; ``approx = coef · Bs`` with the basis
   ``B = Pb[:N, :r]^T`` and ``Bs`` = ``B`` with ``|B| <= basis_threshold`` zeroed;
2. the mask: each row's top ``ceil(keep_rate · N)`` entries of ``approx`` (detached; ties,
   common since the thresholded basis is mostly zeros, go the way ``torch.topk`` breaks them);
   with ``cls_token`` row 0 attends every token (its predictor row is unused);
3. ``softmax(QK^T · K^-0.5`` masked to ``-inf`` outside the mask``) V``, then ``proj``
   (:func:`attnzoo.ops.sparsifiner.sparse_attention`).

Training the predictor: the mask is detached, so ``W_cq, W_ck, P, Pb`` learn only from the
reconstruction loss, :meth:`SparsifinerAttention.aux_loss` (the loss of the latest
training-mode forward, a scalar in its graph; ``None`` before one): the official attention
reconstruction between ``coef · B`` (dense coefficients, unthresholded basis: the official
training path) and the dense attention ``softmax(QK^T · K^-0.5)`` (detached: the official
target is a teacher's attention), cls row excluded when ``cls_token``. ``recon_loss="mse"``
(the official default) is ``recon_weight · sum((approx - attn)²)`` (``reduction='sum'``);
``"kl"`` is ``recon_weight · KL(attn || softmax(approx))`` per row, averaged over the batch
(``batchmean``, the official KL treats ``approx`` as logits); ``"none"`` computes nothing.
With a loss set, a training forward also forms the dense ``N x N`` attention for its target.

Choices and departures:

- **Variable N**: the official ``P, Pb`` are ``[num_tokens, num_tokens // reduce_n]`` for one
  fixed ``N``. Here they are ``[max_tokens, max_tokens // reduce_n]`` and a call with ``N``
  tokens uses the first ``N`` rows and ``r = max(2, N // reduce_n)`` columns, so ``N -> N/r``
  holds at every length and ``N = max_tokens`` is the official layer; ``N > max_tokens`` raises
  ``ValueError``. At least two columns: with one, the predictor's softmax over it is the
  constant 1 and its projections learn nothing (any ``N < 2·reduce_n``). (Adaptive pooling
  was the alternative; slicing keeps the learned per-token projection the paper describes.)
- **Mode-independent mask**: the official code sparsifies ``coef`` and thresholds the basis only
  outside reconstruction training (and uses plain dense attention during it); here the mask is
  always built from the sparsified map, so train and eval outputs agree.
- **Ties**: the thresholded basis zeroes many entries of the predicted map, so when the key
  budget exceeds a row's non-zero entries the row's top-k ties; ``torch.topk`` and an exported
  model's TopK (e.g. onnxruntime's) may break such ties differently and pick other keys.
- **Basis sign**: the official inference basis is ``nn.Threshold(t, 0)(|B|)``, i.e. ``|B|``
  with small entries zeroed, although training reconstructs with the signed ``B``; here the
  thresholded basis keeps its sign, consistent with what the loss trains.
- **Predictor scale** ``num_heads^-0.5``: the official code's (probably meant ``c^-0.5``); kept,
  since ``W_cq`` absorbs any scale.
- **Masked softmax**: the official ``Attention`` fills ``-inf`` and applies ``nan_to_num`` (its
  ``softmax_with_policy`` with ``+1e-6`` is commented out); no row is empty here.
- Biases: ``qkv`` bias per ``qkv_bias`` (default off), ``proj`` with bias (official and timm).

Left out: token pruning (``token_mask``, the DynamicViT-style part of the model, not the mixer),
the threshold variant of the connectivity mask and of the coefficients (the default config uses
top-k for both), the budget losses, attention dropout.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnzoo.config import limit
from attnzoo.mixers.base import AttentionMaps, Mixer
from attnzoo.mixers.common import HeadsConfig
from attnzoo.ops.sparsifiner import (
    approx_attention,
    approx_attention_flops,
    connectivity,
    sparse_attention,
    sparse_attention_flops,
    sparse_weights,
)
from attnzoo.peers import PeerCase, PeerPair, randomise_biases, register_case
from attnzoo.registry import Paper, register_mixer
from attnzoo.spec import ExportSupport

PAPER = Paper(
    title="Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision "
    "Transformers",
    year=2023,
    url="https://arxiv.org/abs/2303.13755",
    code="https://github.com/lim142857/Sparsifiner",
)


@dataclasses.dataclass(frozen=True)
class SparsifinerConfig(HeadsConfig):
    """Sparsifiner attention.

    Attributes:
        keep_rate: fraction of keys each query attends, ``ceil(keep_rate · N)`` (paper: 0.25).
        reduce_n: token reduction of the predictor, ``N -> N // reduce_n`` (official config 6).
        reduce_c: channel reduction of the predictor, ``c = head width // reduce_c`` (2).
        max_tokens: the longest call; sizes the learned token projections (a call uses their
            first ``N`` rows).
        coef_topk: basis coefficients kept per row (official 8); ``None`` keeps all.
        basis_threshold: basis entries with ``|B| <= basis_threshold`` count as 0 (0.02).
        cls_token: token 0 is a cls token whose row attends every token (official: always).
        recon_loss: ``mse`` | ``kl`` | ``none``: the predictor's reconstruction loss
            (:meth:`SparsifinerAttention.aux_loss`).
        recon_weight: the reconstruction loss' weight (official 0.01).
        qkv_bias: bias on the q/k/v projection (the output projection always has one).
        impl: ``auto`` (``gather``) | ``reference`` (masked dense scores) | ``gather``.
    """

    keep_rate: float = limit(0.25, gt=0, le=1)
    reduce_n: int = limit(6, ge=1)
    reduce_c: int = limit(2, ge=1)
    max_tokens: int = limit(2048, ge=1)
    coef_topk: int | None = limit(8, ge=1)
    basis_threshold: float = limit(0.02, ge=0, finite=True)
    cls_token: bool = False
    recon_loss: Literal["mse", "kl", "none"] = "mse"
    recon_weight: float = limit(0.01, ge=0, finite=True)
    qkv_bias: bool = False
    impl: Literal["auto", "reference", "gather"] = "auto"

    @property
    def reduced_c(self) -> int:
        return self.dim_head // self.reduce_c

    def validate(self) -> None:
        if self.reduced_c < 1:
            raise ValueError(f"{self._owner()}: reduce_c must be <= the head width "
                             f"{self.dim_head}, got {self.reduce_c}")  # fmt: skip

    def budget(self, N: int) -> int:
        """Keys per query row at ``N`` tokens."""
        return min(N, math.ceil(self.keep_rate * N))

    def reduced_n(self, N: int) -> int:
        return max(2, N // self.reduce_n)


def sparsifiner_flops(cfg: SparsifinerConfig, batch: int, T: int, S: int | None,
                      mask: object) -> int:  # fmt: skip
    """Projections (``qkv``, ``proj``, the predictor's ``W_cq, W_ck``), the predictor and the
    masked attention over ``keep·N`` keys per row (dense cls row); top-k selection not counted."""
    H, K, D, c = cfg.heads, cfg.dim_head, cfg.d_model, cfg.reduced_c
    proj = 2 * batch * T * D * 4 * D + 2 * batch * T * H * 2 * K * c
    pred = approx_attention_flops(batch, H, c, T, cfg.reduced_n(T), cfg.coef_topk)
    dense = int(cfg.cls_token and T > 0)
    return proj + pred + sparse_attention_flops(batch, H, K, K, T, cfg.budget(T), dense)


@register_mixer(
    "sparsifiner",
    config=SparsifinerConfig,
    family="sparse",
    patterns=("noncausal-self",),
    attention_maps=True,
    complexity="O(T²·c/r + T²·k_c + keep·T²·K) time with c = K/2, r = reduce_n, k_c = "
    "coef_topk; O(T²) memory for the predicted map (impl='gather' never forms the T² scores)",
    paper=PAPER,
    peer="timm Attention at keep_rate=1 (copied qkv/proj weights)",
    flops=sparsifiner_flops,
    export=ExportSupport(
        dynamic="the key budget ceil(keep_rate·N) and the basis width max(2, N // reduce_n) are "
        "top-k sizes computed from the length, which torch.export specialises",
    ),
)
class SparsifinerAttention(Mixer):
    cfg: SparsifinerConfig

    def __init__(self, cfg: SparsifinerConfig) -> None:
        super().__init__(cfg)
        D, K, c = cfg.d_model, cfg.dim_head, cfg.reduced_c
        self.qkv = nn.Linear(D, 3 * D, bias=cfg.qkv_bias)
        self.proj = nn.Linear(D, D)
        self.proj_c_q = nn.Linear(K, c)
        self.proj_c_k = nn.Linear(K, c)
        r = cfg.reduced_n(cfg.max_tokens)
        self.proj_n = nn.Parameter(nn.init.trunc_normal_(torch.empty(cfg.max_tokens, r), std=0.02))
        self.proj_back_n = nn.Parameter(
            nn.init.trunc_normal_(torch.empty(cfg.max_tokens, r), std=0.02)
        )
        self._aux: Tensor | None = None

    def aux_loss(self) -> Tensor | None:
        """The reconstruction loss of the latest training-mode forward (a scalar in its graph),
        or ``None`` before one (or with ``recon_loss='none'``)."""
        return self._aux

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        qkv = rearrange(self.qkv(x), "b t (three h k) -> three b t h k", three=3, h=self.cfg.heads)
        return qkv[0], qkv[1], qkv[2]  # [B, T, H, K] each

    def _predict(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(index [B, T, H, budget], approx [B, H, T, T], coef [B, H, T, r])``."""
        cfg, N = self.cfg, q.shape[1]
        if N > cfg.max_tokens:
            raise ValueError(f"sparsifiner: the call has {N} tokens, more than max_tokens="
                             f"{cfg.max_tokens}; build the block with max_tokens >= {N}")  # fmt: skip
        r = cfg.reduced_n(N)
        down, basis = self.proj_n[:N, :r], self.proj_back_n[:N, :r].t()  # [N, r], [r, N]
        approx, coef = approx_attention(
            self.proj_c_q(q), self.proj_c_k(k), down, basis, scale=cfg.heads**-0.5,
            coef_topk=cfg.coef_topk, threshold=cfg.basis_threshold,
        )  # fmt: skip
        return connectivity(approx, cfg.budget(N)), approx, coef

    def _dense_rows(self, N: int) -> int:
        return int(self.cfg.cls_token and N > 0)

    def _out(self, o: Tensor) -> Tensor:
        return self.proj(rearrange(o, "b t h k -> b t (h k)"))  # [B, T, H, K] -> [B, T, D]

    def mix(self, x: Tensor, context: None, mask: object) -> Tensor:
        """Shapes: x ``[B, N, D]`` -> ``[B, N, D]``."""
        q, k, v = self._project(x)
        index, _, coef = self._predict(q, k)
        impl = "gather" if self.cfg.impl == "auto" else self.cfg.impl
        o = sparse_attention(q, k, v, index, dense_rows=self._dense_rows(x.shape[1]), impl=impl)
        if self.training and self.cfg.recon_loss != "none":
            self._aux = self._recon(q, k, coef)
        return self._out(o)

    def _recon(self, q: Tensor, k: Tensor, coef: Tensor) -> Tensor:
        N, cls = q.shape[1], self._dense_rows(q.shape[1])
        with torch.no_grad():
            s = torch.einsum("bthk,bshk->bhts", q, k) * q.shape[-1] ** -0.5
            target = torch.softmax(s, dim=-1)[:, :, cls:]  # [B, H, N - cls, N]
        approx = coef[:, :, cls:] @ self.proj_back_n[:N, : coef.shape[-1]].t()  # [B, H, ., N]
        if self.cfg.recon_loss == "mse":
            loss = F.mse_loss(approx, target, reduction="sum")
        else:
            loss = F.kl_div(F.log_softmax(approx, dim=-1), target, reduction="batchmean")
        return self.cfg.recon_weight * loss

    def maps(self, x: Tensor, context: None, mask: object) -> AttentionMaps:
        """The masked softmax weights ``[B, H, N, N]`` (0 outside the mask); exact."""
        q, k, v = self._project(x)
        index = self._predict(q, k)[0]
        a = sparse_weights(q, k, index, dense_rows=self._dense_rows(x.shape[1]))
        values = rearrange(v, "b s h k -> b h s k")
        return AttentionMaps(a, values, lambda o: self._out(rearrange(o, "b h t k -> b t h k")))


# ---- peer: timm Attention at keep_rate=1 (DeiT-S widths, a cls token, copied weights) ------
PEER_B, PEER_D, PEER_H = 2, 384, 6


def _timm_case(T: int, g: torch.Generator) -> PeerPair:
    from timm.models.vision_transformer import Attention

    theirs = randomise_biases(Attention(PEER_D, num_heads=PEER_H, qkv_bias=True), g)
    cfg = SparsifinerConfig(d_model=PEER_D, num_heads=PEER_H, keep_rate=1.0, cls_token=True,
                            qkv_bias=True, max_tokens=T)  # fmt: skip
    ours = SparsifinerAttention(cfg).eval()
    with torch.no_grad():
        for name in ("qkv.weight", "qkv.bias", "proj.weight", "proj.bias"):
            ours.get_parameter(name).copy_(theirs.get_parameter(name))
    x = torch.randn(PEER_B, T, PEER_D, generator=g)
    return PeerPair(ours=lambda: ours(x), peer=lambda: theirs(x),
                    flops=sparsifiner_flops(cfg, PEER_B, T, None, None),
                    size=f"B={PEER_B} T={T} D={PEER_D} H={PEER_H}")  # fmt: skip


register_case(PeerCase("sparsifiner/timm", "sparsifiner", "timm Attention (keep_rate=1)",
                       ("timm",), _timm_case, (197, 577), (197,),
                       notes="keep_rate=1, cls_token, impl='gather': every key kept, so equal "
                       "to dense attention", smoke_size=64))  # fmt: skip
