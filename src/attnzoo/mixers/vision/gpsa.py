"""ConViT gated positional self-attention (V-GPSA), with ConViT's local initialisation.

d'Ascoli et al., "ConViT: Improving Vision Transformers with Soft Convolutional Inductive
Biases", 2021. https://arxiv.org/abs/2103.10697  Code: https://github.com/facebookresearch/convit
(``convit.py``: ``GPSA``). The peer tests compare against timm's ``timm.models.convit.GPSA``.

On channels-last ``x [B, h, w, C]``, tokens flattened row-major (``N = h*w``, token
``n = r*w + c``), per head ``h`` (``C = H * d``):

1. Content attention ``P_h = softmax(q k^T d**-0.5)`` with ``q, k = x W_qk`` (one linear).
2. Positional attention ``Q_h = softmax_m(p_h . r_nm)``, where ``r_nm = (dx, dy, dx² + dy²)``
   with ``dx = c_m - c_n``, ``dy = r_m - r_n`` (key minus query; ``p_h`` is row ``h`` of
   ``pos_proj``, 3 features to one logit per head). Defined for any ``h x w``: ConViT/timm
   build ``r`` for square grids only (``int(sqrt(N))``), this mixer uses the true grid, and
   equals timm on square grids.
3. ``A_h = (1 - sigmoid(lambda_h)) P_h + sigmoid(lambda_h) Q_h``; ``o = proj(concat_h A_h v_h)``
   with ``v = x W_v``.

``impl`` picks how the formula above runs:

- ``reference``: the definition with every weight materialised. Pairwise offsets from each
  token's explicit ``(row, col) = (n // w, n % w)``, the ``[B, H, N, N]`` content softmax, the
  ``[H, N, N]`` positional softmax, their gated sum divided by its row sums (as ConViT does),
  then ``A v`` and ``proj``. :meth:`GPSAMixer.maps` returns these ``A_h`` (exact:
  ``proj(concat_h A_h v_h)`` is the output).
- ``sdpa`` (``auto``): ConViT's renormalisation divides by ``(1 - s) + s = 1``, so this path
  skips it (the results differ by rounding only). ``P_h v`` runs as fused SDPA (no ``N x N``
  content matrix); ``Q_h`` does not depend on the batch and is computed once per call, with
  the batch folded into the columns of ``Q_h v``. Entries of ``Q_h`` below ``finfo.tiny``
  (subnormals, far keys of a local head) are set to 0: subnormal operands slow the ``Q_h v``
  matmul by ~10x on x86 CPUs.

``pos_proj`` has no bias here: a per-head constant added to every logit of a softmax row
changes nothing (timm's ``pos_proj.bias`` is dropped by :func:`load_timm_weights`). The peer
case ``gpsa/timm`` compares the default path with timm's ``GPSA`` at ConViT-Ti's width.

Initialisation follows ConViT: ``trunc_normal_(std=0.02)`` linear weights (cut at +-2, as
there), zero biases, gates ``lambda = 1``, and ``local_init``: ``W_v = I`` and, for the first
``k²`` heads (``k = int(sqrt(H))``), ``pos_proj`` rows ``alpha * (2 dx_h, 2 dy_h, -1)`` over
(dx, dy, d²), i.e. logits ``-alpha |(dx, dy) - (dx_h, dy_h)|²`` + const: head ``h1 + k*h2``
attends around offset ``dx_h = h2 - c``, ``dy_h = h1 - c`` of a ``k x k`` kernel centred on the
query (``alpha = locality_strength``); other heads keep the truncated-normal rows.
Left out: dropout (0 in ConViT) and the block around the mixer (norms, MLP, class token).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from attnzoo.config import limit
from attnzoo.mixers.base import AttentionMaps, Mixer
from attnzoo.mixers.common import HeadsConfig, default_heads, load_matching_state
from attnzoo.ops.masks import Mask
from attnzoo.peers import PeerCase, PeerPair, randomise_biases, register_case, tokens_peer_pair
from attnzoo.registry import Paper, register_mixer

PAPER = Paper(
    title="ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases",
    year=2021,
    url="https://arxiv.org/abs/2103.10697",
    code="https://github.com/facebookresearch/convit",
)

HEAD_WIDTH = 48  # ConViT's head width (4, 9, 16 heads at C = 192, 432, 768)


@dataclasses.dataclass(frozen=True)
class GPSAConfig(HeadsConfig):
    """ConViT GPSA mixer. ``d_model`` is the channel count C.

    Attributes:
        num_heads: heads; ``None`` means head width 48 (ConViT's) when 48 divides C, else
            :func:`~attnzoo.mixers.common.default_heads`. The local init places
            ``int(sqrt(H))²`` heads on a kernel, so square counts (1, 4, 9, 16) use them all.
        qkv_bias: bias on the q/k and v projections (ConViT: off).
        locality_strength: ``alpha``, the sharpness of the initial positional attention.
        local_init: apply ConViT's local initialisation (``W_v = I``, kernel offsets).
        impl: ``auto`` (= ``sdpa``) | ``reference`` (materialised weights) | ``sdpa`` (fused
            content attention, batch-shared positional attention); see the module docstring.
    """

    qkv_bias: bool = False
    locality_strength: float = limit(1.0, gt=0, finite=True)
    local_init: bool = True
    impl: Literal["auto", "reference", "sdpa"] = "auto"

    def default_num_heads(self) -> int:
        C = self.d_model
        return C // HEAD_WIDTH if C % HEAD_WIDTH == 0 else default_heads(C)


def gpsa_flops(cfg: GPSAConfig, batch: int, T: int, S: int | None, mask: Mask | None) -> int:
    """``T = h*w``: q/k, v and output projections, content attention (``q k^T`` and ``P v``),
    positional ``Q v`` and the positional logits (softmaxes and the gate mix not counted)."""
    C, H = cfg.d_model, cfg.heads
    proj = 2 * batch * T * 4 * C * C
    return proj + 2 * 3 * batch * T * T * C + 2 * H * T * T * 3


def relative_offsets(h: int, w: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``r[:, n, m] = (dx, dy, dx² + dy²)`` between query ``n`` and key ``m`` (key minus query)
    of a row-major ``h x w`` grid. Shapes: -> ``[3, h*w, h*w]``."""
    rows = torch.arange(h, device=device, dtype=dtype).repeat_interleave(w)  # [N]
    cols = torch.arange(w, device=device, dtype=dtype).repeat(h)  # [N]
    dy = rows[None, :] - rows[:, None]  # [N, N]
    dx = cols[None, :] - cols[:, None]
    return torch.stack([dx, dy, dx * dx + dy * dy])


def local_init_rows(heads: int, strength: float) -> tuple[int, Tensor]:
    """ConViT's kernel rows of ``pos_proj``: ``(k², rows [k², 3])`` with ``k = int(sqrt(H))``;
    head ``h1 + k*h2`` gets ``strength * (2 (h2 - c), 2 (h1 - c), -1)``, ``c`` the centre."""
    k = int(heads**0.5)
    center = (k - 1) / 2 if k % 2 == 0 else k // 2
    rows = torch.empty(k * k, 3)
    for h1 in range(k):
        for h2 in range(k):
            rows[h1 + k * h2] = torch.tensor([2.0 * (h2 - center), 2.0 * (h1 - center), -1.0])
    return k * k, rows * strength


@register_mixer(
    "gpsa",
    config=GPSAConfig,
    family="hybrid",
    layout="grid2d",
    attention_maps=True,
    complexity="O((h·w)²·C) time; O(H·(h·w)²) memory for the positional attention",
    paper=PAPER,
    peer="timm.models.convit.GPSA (square grids; both paths, outputs, gradients and maps)",
    flops=gpsa_flops,
)
class GPSAMixer(Mixer):
    cfg: GPSAConfig

    def __init__(self, cfg: GPSAConfig) -> None:
        super().__init__(cfg)
        C, H = cfg.d_model, cfg.heads
        self.qk = nn.Linear(C, 2 * C, bias=cfg.qkv_bias)
        self.v = nn.Linear(C, C, bias=cfg.qkv_bias)
        self.proj = nn.Linear(C, C)
        self.pos_proj = nn.Linear(3, H, bias=False)
        self.gating_param = nn.Parameter(torch.ones(H))
        self._offsets: tuple[tuple, Tensor] | None = None  # one-entry cache of r
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """ConViT's init: truncated normal (std 0.02), zero biases, then ``local_init``."""
        for lin in (self.qk, self.v, self.proj, self.pos_proj):
            nn.init.trunc_normal_(lin.weight, std=0.02)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        self.gating_param.fill_(1.0)
        if self.cfg.local_init:
            self.v.weight.copy_(torch.eye(self.cfg.d_model))
            n, rows = local_init_rows(self.cfg.heads, self.cfg.locality_strength)
            self.pos_proj.weight[:n] = rows

    def offsets(self, h: int, w: int, like: Tensor) -> Tensor:
        """Cached :func:`relative_offsets` for the current grid, device and dtype (not cached
        under torch.compile / torch.export: a traced tensor must not outlive its trace, and a
        comparison with the cached grid would fix a dynamic grid size)."""
        if torch.compiler.is_compiling():
            return relative_offsets(h, w, device=like.device, dtype=like.dtype)
        key = (h, w, like.device, like.dtype)
        if self._offsets is None or self._offsets[0] != key:
            r = relative_offsets(h, w, device=like.device, dtype=like.dtype)
            self._offsets = (key, r)
        return self._offsets[1]

    def positional_attention(self, h: int, w: int) -> Tensor:
        """``Q`` of every head. Shapes: -> ``[H, h*w, h*w]``."""
        weight = self.pos_proj.weight  # [H, 3]
        r = self.offsets(h, w, weight)  # [3, N, N]
        p = (weight @ r.flatten(1)).view(-1, *r.shape[1:]).softmax(-1)  # [H, N, N]
        # far keys of a local head get subnormal weights, which make the matmul with v crawl
        # on x86; zero them (a change below finfo.tiny, far below rounding of the row sum)
        return p.masked_fill(p < torch.finfo(p.dtype).tiny, 0.0)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Shapes: x ``[B, h, w, C]`` -> q, k ``[B, H, N, d]``, v ``[B, N, C]`` (row-major)."""
        B, h, w, C = x.shape
        tokens = x.reshape(B, h * w, C)  # [B, N, C], row-major tokens
        q, k = rearrange(self.qk(tokens), "b n (two h d) -> two b h n d", two=2, h=self.cfg.heads)
        return q, k, self.v(tokens)

    def _finish(self, o: Tensor, h: int, w: int) -> Tensor:
        """Heads concatenated, then ``proj``: o ``[B, H, N, d]`` -> ``[B, h, w, C]``."""
        y = self.proj(rearrange(o, "b h n d -> b n (h d)"))  # [B, N, C]
        return y.view(y.shape[0], h, w, y.shape[-1])

    def _weights(self, q: Tensor, k: Tensor, h: int, w: int) -> Tensor:
        """The reference: ConViT's gated, renormalised attention, every weight materialised.
        Shapes: q, k ``[B, H, N, d]`` -> ``A [B, H, N, N]``."""
        n = torch.arange(h * w, device=q.device)
        row, col = n // w, n % w  # token n = row * w + col
        dx = col[None, :] - col[:, None]  # [N, N]: key minus query
        dy = row[None, :] - row[:, None]
        rel = torch.stack([dx, dy, dx * dx + dy * dy], -1).to(q.dtype)  # [N, N, 3]
        pos = (rel @ self.pos_proj.weight.T).permute(2, 0, 1).softmax(-1)  # [H, N, N]
        content = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)  # [B, H, N, N]
        gate = torch.sigmoid(self.gating_param)[:, None, None]  # [H, 1, 1]
        attn = (1 - gate) * content + gate * pos  # [B, H, N, N]
        return attn / attn.sum(-1, keepdim=True)

    def mix(self, x: Tensor, context: None, mask: object) -> Tensor:
        """Shapes: x ``[B, h, w, C]`` (channels-last) -> ``[B, h, w, C]``."""
        B, h, w, C = x.shape
        H = self.cfg.heads
        q, k, v = self._project(x)  # [B, H, N, d] x 2, [B, N, C]
        if self.cfg.impl == "reference":
            v = rearrange(v, "b n (h d) -> b h n d", h=H)
            return self._finish(self._weights(q, k, h, w) @ v, h, w)
        content = F.scaled_dot_product_attention(
            q, k, rearrange(v, "b n (h d) -> b h n d", h=H)
        )  # [B, H, N, d]
        v_heads = rearrange(v, "b n (h d) -> h n (b d)", h=H)  # batch folded into columns
        pos = torch.bmm(self.positional_attention(h, w), v_heads)  # [H, N, B*d]
        pos = rearrange(pos, "h n (b d) -> b h n d", b=B)
        gate = torch.sigmoid(self.gating_param)[:, None, None]  # [H, 1, 1]
        o = torch.lerp(content, pos, gate)  # (1 - s) content + s positional [B, H, N, d]
        return self._finish(o, h, w)

    def maps(self, x: Tensor, context: None, mask: object) -> AttentionMaps:
        """The gated mixture ``A_h`` of both softmaxes, ``[B, H, h*w, h*w]``; exact."""
        _, h, w, _ = x.shape
        q, k, v = self._project(x)
        values = rearrange(v, "b n (h d) -> b h n d", h=self.cfg.heads)  # [B, H, N, d]
        return AttentionMaps(self._weights(q, k, h, w), values, lambda o: self._finish(o, h, w))


def load_timm_weights(mixer: GPSAMixer, timm_module: nn.Module) -> None:
    """Copy a timm ``convit.GPSA`` into ``mixer``. Same names and layouts (``qk.weight [2C, C]``
    rows ordered q/k, head, channel; ``v``; ``proj``; ``pos_proj.weight [H, 3]`` over
    (dx, dy, d²); ``gating_param [H]``), except ``pos_proj.bias [H]``, which is dropped (it
    cannot change a softmax row). Raises ``ValueError`` on missing, extra or mis-shaped entries."""
    theirs = dict(timm_module.state_dict())
    bias = theirs.pop("pos_proj.bias", None)
    if bias is not None and bias.shape != (mixer.cfg.heads,):
        raise ValueError(
            f"gpsa: timm 'pos_proj.bias' has shape {tuple(bias.shape)}, "
            f"expected ({mixer.cfg.heads},)"
        )
    load_matching_state(mixer, theirs, source="timm")


# ---- peer: timm's ConViT GPSA -------------------------------------------------------------------
PEER_BATCH = 8
TIMM = ("timm", "torchvision")


def _timm_case(side: int, g: torch.Generator) -> PeerPair:
    """timm ``convit.GPSA`` at ConViT-Ti's width (C=192, 4 heads, ``local_init`` as ConViT
    does, biases moved off zero) on ``[B, N, C]`` tokens, a free view of our channels-last
    input; same weights (:func:`load_timm_weights`), forward, fp32."""
    from timm.models.convit import GPSA

    C = 192
    theirs = GPSA(C, num_heads=4, qkv_bias=False)
    theirs.local_init()
    theirs = randomise_biases(theirs, g)
    ours = GPSAMixer(GPSAConfig(d_model=C, num_heads=4)).eval()
    load_timm_weights(ours, theirs)
    x = torch.randn(PEER_BATCH, side, side, C, generator=g)
    return tokens_peer_pair(
        ours, theirs, x, gpsa_flops(ours.cfg, PEER_BATCH, side * side, None, None)
    )


register_case(PeerCase("gpsa/timm", "gpsa", "timm convit.GPSA (local_init)", TIMM, _timm_case,
                       (14, 28), (14,), smoke_size=5))  # fmt: skip
