"""A hierarchical MetaFormer backbone, for images (``grid2d``) or volumes (``grid3d``), that takes
any registered token mixer.

Yu et al., "MetaFormer Is Actually What You Need for Vision", 2022,
https://arxiv.org/abs/2111.11418, and "MetaFormer Baselines for Vision", 2023,
https://arxiv.org/abs/2210.13452. Code: https://github.com/sail-sg/metaformer
(timm: ``timm.models.metaformer.MetaFormer``).

Layout, like timm's image models: ``x [B, 3, H, W] -> logits [B, num_classes]`` (a volume
backbone, ``layout="grid3d"``: ``x [B, C_in, D, H, W]``, every convolution 3-D).

1. Stem: ``Conv 7x7, stride 4, padding 2`` then LayerNorm: ``[B, C_0, H/4, W/4]``.
2. Four stages; stage ``i > 0`` starts with a downsampling ``LayerNorm -> Conv 3x3, stride 2,
   padding 1`` (total stride 32). Each stage has ``depths[i]`` blocks on channels-last
   ``x [B, h, w, C_i]`` (``[B, d, h, w, C_i]``)::

       x = x + mixer(norm1(x))
       x = x + mlp(norm2(x))          # mlp = Linear(C, r*C) -> GELU -> Linear(r*C, C)

   (optionally with layer scale and drop path). A mixer of the backbone's layout sees the
   channels-last grid; a ``tokens`` mixer sees it flattened row-major to ``[B, h*w, C]``. Either
   must be a token mixer (role ``mixer``) with the ``noncausal-self`` pattern (it is built with
   ``causal=False``); a mixer of another grid layout raises, naming both layouts.
3. Head: global average pool -> LayerNorm -> dropout -> Linear (``num_classes=0``: no Linear,
   the pooled, normalised features are returned).

``features_only=True`` builds the stem and the stages up to ``max(out_indices)`` and returns the
list of per-stage feature maps ``[B, C_i, H_i, W_i]`` (channels-first, like timm).

Every image side must be at least the stride of the last built stage (32 for the full network),
so that each stage sees a grid made from real pixels; a mixer may add its own constraints on the
grid sizes ``h_i, w_i`` (it raises a ``ValueError`` naming them).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from attnzoo.config import suggest
from attnzoo.models.registry import register_model
from attnzoo.registry import build_mixer, get_spec, list_mixers
from attnzoo.spec import LAYOUTS

NUM_STAGES = 4
TINY_DIMS, TINY_DEPTHS = (32, 64, 128, 256), (1, 1, 2, 1)
SMALL_DIMS, SMALL_DEPTHS = (64, 128, 320, 512), (2, 2, 6, 2)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

MixerKwargs = Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None


def _per_stage(arg: str, value: Any, single: type | tuple[type, ...]) -> tuple[Any, ...]:
    """``value`` itself for every stage, or a sequence with one entry per stage."""
    if isinstance(value, single):
        return (value,) * NUM_STAGES
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise TypeError(
            f"metaformer: {arg} must be one value or a sequence of {NUM_STAGES} (one per stage), "
            f"got {value!r} ({type(value).__name__})"
        )
    if len(value) != NUM_STAGES:
        raise ValueError(
            f"metaformer: {arg} needs one entry per stage ({NUM_STAGES}), "
            f"got {len(value)} entries: {tuple(value)!r}"
        )
    return tuple(value)


def _check_int(arg: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"metaformer: {arg} must be an int >= {minimum}, got {value!r}")


def _int_tuple(arg: str, value: Any, minimum: int) -> tuple[int, ...]:
    """A sequence of one int per stage."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"metaformer: {arg} must be a sequence of {NUM_STAGES} ints (one per stage), "
            f"got {value!r} ({type(value).__name__})"
        )
    values = _per_stage(arg, value, ())
    for i, v in enumerate(values):
        _check_int(f"{arg}[{i}]", v, minimum)
    return values


def build_stage_mixer(
    stage: int, name: Any, d_model: int, kwargs: Mapping[str, Any], layout: str = "grid2d"
) -> nn.Module:
    """The token mixer of one block: a registered mixer built with ``causal=False``.

    Shapes: the returned module maps ``[B, *grid, C] -> [B, *grid, C]`` on ``layout``."""
    where = f"metaformer: mixer for stage {stage}"
    if not isinstance(name, str):
        raise TypeError(f"{where} must be a mixer name (str), got {name!r}")
    names = [s.name for s in list_mixers()]
    if name not in names:
        raise ValueError(
            f"{where}: unknown mixer {name!r}{suggest(name, names)}; registered: {', '.join(names)}"
        )
    spec = get_spec(name)
    if spec.layout not in (layout, "tokens"):
        raise ValueError(
            f"{where}: mixer {name!r} takes {spec.layout} inputs; a {layout} MetaFormer takes "
            f"{layout} mixers or tokens mixers (run over the flattened grid)"
        )
    if spec.role != "mixer" or "noncausal-self" not in spec.patterns:
        raise ValueError(
            f"{where}: mixer {name!r} ({spec.layout}, role {spec.role}) has patterns "
            f"{spec.patterns}; a MetaFormer token mixer needs role 'mixer' and the "
            "'noncausal-self' pattern"
        )
    if not isinstance(kwargs, Mapping):
        raise TypeError(
            f"metaformer: mixer_kwargs for stage {stage} must be a dict or None, got {kwargs!r}"
        )
    for key in ("d_model", "causal"):
        if key in kwargs:
            raise TypeError(
                f"metaformer: mixer_kwargs must not set {key!r} (the backbone sets it), "
                f"got {key}={kwargs[key]!r} for stage {stage}"
            )
    try:
        mixer = build_mixer(name, d_model=d_model, causal=False, **kwargs)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{where} ({name!r}, d_model={d_model}): {e}") from e
    return mixer if spec.layout == layout else FlatTokens(mixer, layout)


class FlatTokens(nn.Module):
    """Runs a ``tokens`` mixer on a grid's tokens in row-major order.

    Shapes: ``[B, *grid, C] -> [B, prod(grid), C] -> [B, *grid, C]``."""

    def __init__(self, mixer: nn.Module, layout: str = "grid2d") -> None:
        super().__init__()
        self.mixer = mixer
        self.layout = LAYOUTS[layout]

    def forward(self, x: Tensor) -> Tensor:
        y = self.mixer(self.layout.flatten(x))  # [B, N, C]
        return self.layout.unflatten(y, self.layout.sizes(x))


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero the branch of whole samples with probability ``p``, rescale."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MetaFormerBlock(nn.Module):
    """``x + mixer(norm1(x))`` then ``x + mlp(norm2(x))`` on channels-last ``[B, h, w, C]``."""

    def __init__(
        self,
        dim: int,
        mixer: nn.Module,
        mlp_ratio: float,
        norm_eps: float,
        layer_scale_init: float | None,
        drop_path_rate: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, max(1, round(dim * mlp_ratio)))
        self.drop_path_rate = drop_path_rate
        if layer_scale_init is None:
            self.gamma1 = self.gamma2 = None
        else:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale_init)))

    def forward(self, x: Tensor) -> Tensor:
        p, train = self.drop_path_rate, self.training
        y = self.mixer(self.norm1(x))  # [B, h, w, C]
        x = x + drop_path(y if self.gamma1 is None else y * self.gamma1, p, train)
        y = self.mlp(self.norm2(x))
        return x + drop_path(y if self.gamma2 is None else y * self.gamma2, p, train)


class Downsample(nn.Module):
    """``LayerNorm -> Conv(k, stride, padding)``; ``pre_norm=False`` puts the norm after the conv
    (the stem). Shapes: ``[B, h, w, C_in] -> [B, h', w', C_out]`` (``[B, 3, H, W]`` in for the stem;
    one more spatial axis with ``rank=3``).
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int,
        padding: int,
        pre_norm: bool,
        eps: float,
        rank: int = 2,
    ) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.norm = nn.LayerNorm(c_in if pre_norm else c_out, eps=eps)
        conv = nn.Conv2d if rank == 2 else nn.Conv3d
        self.conv = conv(c_in, c_out, kernel, stride=stride, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        if self.pre_norm:
            x = self.norm(x).movedim(-1, 1)  # channels first for the conv
            return self.conv(x).movedim(1, -1)
        return self.norm(self.conv(x).movedim(1, -1))


class Stage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: list[MetaFormerBlock]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))  # [B, h, w, C]


class Head(nn.Module):
    """Global average pool -> LayerNorm -> dropout -> Linear. Shapes: ``[B, C, *grid] -> [B, N]``."""

    def __init__(self, dim: int, num_classes: int, drop_rate: float, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.drop(self.norm(x.flatten(2).mean(dim=2)))  # [B, C]
        return x if pre_logits else self.fc(x)


def _init_weights(module: nn.Module) -> None:
    """timm-style init for the backbone's own layers (mixers keep their own init)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class MetaFormer(nn.Module):
    """A 4-stage MetaFormer with a registered mixer per stage (see the module docstring).

    Args:
        mixer: one mixer name for every stage, or one per stage.
        mixer_kwargs: extra config for :func:`attnzoo.build_mixer` (one dict for every stage,
            or one dict/``None`` per stage); ``d_model`` and ``causal`` are set by the backbone.
        dims: channel width per stage.
        depths: blocks per stage.
        num_classes: classifier outputs; 0 returns the pooled, normalised features.
        in_chans: image channels.
        mlp_ratio: MLP hidden width / channel width.
        norm_eps: epsilon of every LayerNorm.
        layer_scale_init: initial per-channel scale of both residual branches, or ``None``.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, increasing linearly to this rate over the blocks.
        features_only: return the per-stage feature maps instead of logits.
        out_indices: the stages returned by ``features_only`` (negative counts from the end).
        layout: ``grid2d`` (images) or ``grid3d`` (volumes: 3-D convolutions, grid3d mixers).

    Shapes:
        x ``[B, in_chans, H, W]`` (``[B, in_chans, D, H, W]``) -> ``[B, num_classes]``, or with
        ``features_only`` a list of ``[B, dims[i], H_i, W_i]`` for ``i`` in ``out_indices``.
    """

    def __init__(
        self,
        *,
        mixer: str | Sequence[str],
        mixer_kwargs: MixerKwargs = None,
        dims: Sequence[int] = TINY_DIMS,
        depths: Sequence[int] = TINY_DEPTHS,
        num_classes: int = 1000,
        in_chans: int = 3,
        mlp_ratio: float = 4.0,
        norm_eps: float = 1e-6,
        layer_scale_init: float | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        layout: str = "grid2d",
    ) -> None:
        super().__init__()
        if layout not in ("grid2d", "grid3d"):
            raise ValueError(f"metaformer: layout must be 'grid2d' or 'grid3d', got {layout!r}")
        self.layout = layout
        self.rank = len(LAYOUTS[layout].axes)
        mixers = _per_stage("mixer", mixer, str)
        if mixer_kwargs is None:
            mixer_kwargs = {}
        stage_kwargs = [kw or {} for kw in _per_stage("mixer_kwargs", mixer_kwargs, Mapping)]
        self.dims = _int_tuple("dims", dims, 1)
        self.depths = _int_tuple("depths", depths, 1)
        _check_int("num_classes", num_classes, 0)
        _check_int("in_chans", in_chans, 1)
        for arg, value in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"metaformer: {arg} must be in [0, 1), got {value!r}")
        if not mlp_ratio > 0:
            raise ValueError(f"metaformer: mlp_ratio must be > 0, got {mlp_ratio!r}")
        self.features_only = bool(features_only)
        self.out_indices = self._check_out_indices(out_indices)
        last = max(self.out_indices) if self.features_only else NUM_STAGES - 1
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.mixers = mixers

        rank = self.rank
        self.stem = Downsample(in_chans, self.dims[0], 7, 4, 2, False, norm_eps, rank)
        rates = torch.linspace(0, drop_path_rate, sum(self.depths)).tolist()
        stages, start = [], 0
        for i in range(last + 1):
            d = self.dims[i]
            down = (
                nn.Identity()
                if i == 0
                else Downsample(self.dims[i - 1], d, 3, 2, 1, True, norm_eps, rank)
            )
            blocks = [
                MetaFormerBlock(
                    d,
                    build_stage_mixer(i, mixers[i], d, stage_kwargs[i], layout),
                    mlp_ratio,
                    norm_eps,
                    layer_scale_init,
                    rates[start + j],
                )
                for j in range(self.depths[i])
            ]
            start += self.depths[i]
            stages.append(Stage(down, blocks))
        self.stages = nn.ModuleList(stages)
        info = [
            {"num_chs": self.dims[i], "reduction": 4 * 2**i, "module": f"stages.{i}"}
            for i in range(last + 1)
        ]
        self.feature_info = [info[i] for i in self.out_indices] if self.features_only else info
        self.min_size = 4 * 2**last
        self.num_features = self.head_hidden_size = self.dims[last]
        self.head = (
            None if self.features_only else Head(self.dims[-1], num_classes, drop_rate, norm_eps)
        )
        self.pretrained_cfg = self.default_cfg = {
            "num_classes": num_classes,
            "input_size": (in_chans,) + (224,) * rank,
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "first_conv": "stem.conv",
            "classifier": "head.fc",
        }
        for part in [self.stem, *(s.downsample for s in stages), self.head]:
            if part is not None:
                _init_weights(part)
        for s in stages:
            for b in s.blocks:
                _init_weights(b.mlp)

    @staticmethod
    def _check_out_indices(out_indices: Sequence[int]) -> tuple[int, ...]:
        ok = isinstance(out_indices, Sequence) and len(out_indices) > 0
        idx = []
        for i in out_indices if ok else ():
            if isinstance(i, bool) or not isinstance(i, int) or not -NUM_STAGES <= i < NUM_STAGES:
                ok = False
                break
            idx.append(i % NUM_STAGES)
        if not ok or len(set(idx)) != len(idx):
            raise ValueError(
                f"metaformer: out_indices must be distinct stage indices in "
                f"[-{NUM_STAGES}, {NUM_STAGES - 1}], got {out_indices!r}"
            )
        return tuple(idx)

    def check_image(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"metaformer: x must be a torch.Tensor, got {type(x).__name__}")
        axes = ("H", "W") if self.rank == 2 else ("D", "H", "W")
        if x.dim() != 2 + self.rank or x.shape[1] != self.in_chans:
            what = "images" if self.rank == 2 else "volumes"
            raise ValueError(
                f"metaformer: x must be [B, {self.in_chans}, {', '.join(axes)}] (channels-first "
                f"{what}), got shape {tuple(x.shape)}"
            )
        sizes = x.shape[2:]
        if min(sizes) < self.min_size:
            got = ", ".join(f"{a}={s}" for a, s in zip(axes, sizes, strict=True))
            raise ValueError(
                f"metaformer: image size {got} is too small: the {len(self.stages)} stages "
                f"downsample by {self.min_size} in total, so {' and '.join(axes)} must be >= "
                f"{self.min_size}"
            )

    def _stages(self, x: Tensor) -> list[Tensor]:
        """Per-stage channels-last features. Shapes: ``[B, 3, H, W] -> [[B, h_i, w_i, C_i]]``
        (one more spatial axis for volumes)."""
        self.check_image(x)
        x = self.stem(x)  # [B, H/4, W/4, C_0]
        feats = []
        for stage in self.stages:
            x = stage(x)  # [B, h_i, w_i, C_i]
            feats.append(x)
        return feats

    def forward_features(self, x: Tensor) -> Tensor:
        """Shapes: ``[B, 3, H, W] -> [B, C_last, H/32, W/32]`` (channels-first, like timm)."""
        return self._stages(x)[-1].movedim(-1, 1)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Shapes: ``[B, C, h, w] -> [B, num_classes]`` (``[B, C]`` with ``pre_logits``)."""
        if self.head is None:
            raise ValueError("metaformer: built with features_only=True, it has no head")
        return self.head(x, pre_logits=pre_logits)

    def get_classifier(self) -> nn.Module:
        if self.head is None:
            raise ValueError("metaformer: built with features_only=True, it has no classifier")
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier with ``num_classes`` outputs (0: no classifier)."""
        if self.head is None:
            raise ValueError("metaformer: built with features_only=True, it has no classifier")
        _check_int("num_classes", num_classes, 0)
        self.num_classes = num_classes
        ref = self.head.norm.weight
        fc = nn.Linear(self.dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        _init_weights(fc)
        self.head.fc = fc.to(device=ref.device, dtype=ref.dtype)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """Shapes: ``[B, 3, H, W] -> [B, num_classes]``, or the feature maps (``features_only``)."""
        feats = self._stages(x)
        if self.features_only:
            return [feats[i].movedim(-1, 1) for i in self.out_indices]
        return self.forward_head(feats[-1].movedim(-1, 1))


def _build(name: str, kwargs: dict[str, Any]) -> MetaFormer:
    """``MetaFormer(**kwargs)``; an unknown keyword raises naming close matches."""
    valid = [p for p in inspect.signature(MetaFormer.__init__).parameters if p != "self"]
    for key in kwargs:
        if key not in valid:
            raise TypeError(
                f"{name}: unknown argument {key!r}{suggest(key, valid)}; valid: {', '.join(valid)}"
            )
    return MetaFormer(**kwargs)


@register_model("metaformer_tiny", mixer="softmax", dims=TINY_DIMS, depths=TINY_DEPTHS)
def metaformer_tiny(**kwargs: Any) -> MetaFormer:
    """dims (32, 64, 128, 256), depths (1, 1, 2, 1): trains on a CPU; softmax attention unless
    ``mixer`` says otherwise. Keywords: :class:`MetaFormer`."""
    return _build("metaformer_tiny", kwargs)


@register_model("metaformer_small", mixer="softmax", dims=SMALL_DIMS, depths=SMALL_DEPTHS)
def metaformer_small(**kwargs: Any) -> MetaFormer:
    """dims (64, 128, 320, 512), depths (2, 2, 6, 2) (the MetaFormer S12 layout)."""
    return _build("metaformer_small", kwargs)


@register_model("metaformer3d_tiny", mixer="softmax", dims=TINY_DIMS, depths=TINY_DEPTHS,
                layout="grid3d", in_chans=1)  # fmt: skip
def metaformer3d_tiny(**kwargs: Any) -> MetaFormer:
    """metaformer_tiny on volumes ``[B, C_in, D, H, W]`` (``layout="grid3d"``): 3-D convolutions,
    grid3d (or tokens) mixers, one input channel. Keywords: :class:`MetaFormer`."""
    return _build("metaformer3d_tiny", kwargs)
