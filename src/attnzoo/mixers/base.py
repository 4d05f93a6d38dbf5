"""The one mixer interface (DESIGN §1): ``forward(x, context=None, *, mask=None)``, ``step``."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from attnzoo.config import MixerConfig
from attnzoo.ops.masks import Mask
from attnzoo.registry import MixerSpec


class Mixer(nn.Module):
    """Base class of every token mixer.

    1-D mixers map ``x [B, T, D] -> [B, T, D]``; 2-D mixers map channels-last
    ``x [B, h, w, C] -> [B, h, w, C]``. Cross patterns pass ``context [B, S, D]`` at call time;
    causal patterns are selected by ``config.causal``.

    Subclasses implement ``forward`` and call :meth:`pattern_of` and :meth:`check_input` first.
    Mixers whose ``spec.state`` is not ``"none"`` implement ``init_state`` and ``step``.
    """

    spec: ClassVar[MixerSpec]

    def __init__(self, cfg: MixerConfig) -> None:
        super().__init__()
        if not isinstance(cfg, self.spec.config):
            raise TypeError(
                f"{self.spec.name}: config must be {self.spec.config.__name__}, got {type(cfg).__name__}"
            )
        self.cfg = cfg
        wanted = (
            ("causal-self", "causal-cross") if cfg.causal else ("noncausal-self", "noncausal-cross")
        )
        if not any(p in self.spec.patterns for p in wanted):
            raise ValueError(
                f"{self.spec.name} does not support causal={cfg.causal} (patterns {wanted}); "
                f"supported patterns: {', '.join(self.spec.patterns)}"
            )

    @property
    def d_model(self) -> int:
        return self.cfg.d_model

    def extra_repr(self) -> str:
        return f"name={self.spec.name!r}, cfg={self.cfg.to_dict()}"

    # ---- checks shared by every mixer ------------------------------------------------------
    def pattern_of(self, context: Tensor | None) -> str:
        """The CAB pattern of a call; raises ``ValueError`` if the spec does not support it."""
        pattern = ("causal-" if self.cfg.causal else "noncausal-") + (
            "self" if context is None else "cross"
        )
        if pattern not in self.spec.patterns:
            raise ValueError(
                f"{self.spec.name} does not support pattern {pattern!r}; "
                f"supported patterns: {', '.join(self.spec.patterns)}"
            )
        return pattern

    def check_input(self, x: Tensor, context: Tensor | None = None) -> None:
        """Validate rank, width and dtype of ``x`` (and ``context``) with messages naming them."""
        name = self.spec.name
        layout = "[B, T, D]" if self.spec.dims == 1 else "[B, h, w, C] (channels-last)"
        rank = 3 if self.spec.dims == 1 else 4
        for arg, t, width in (("x", x, self.cfg.d_model), ("context", context, self.context_dim)):
            if t is None:
                continue
            if not isinstance(t, Tensor):
                raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != rank:
                raise ValueError(f"{name}: {arg} must be {layout}, got shape {tuple(t.shape)}")
            if t.shape[-1] != width:
                raise ValueError(
                    f"{name}: {arg} last dim must be {width} (the mixer's width), got {t.shape[-1]}"
                )
            if not t.is_floating_point():
                raise TypeError(
                    f"{name}: {arg} must be a floating-point tensor, got dtype {t.dtype}"
                )
        if context is not None and context.shape[0] != x.shape[0]:
            raise ValueError(
                f"{name}: context batch {context.shape[0]} differs from x batch {x.shape[0]}"
            )

    @property
    def context_dim(self) -> int:
        """Width of ``context`` for cross patterns (``d_model`` unless the config says otherwise)."""
        return self.cfg.d_model

    def check_mask(self, mask: Mask | None) -> None:
        """A call-time mask must be of a kind the spec declares and agree with ``causal``."""
        if mask is None:
            return
        if not isinstance(mask, Mask):
            raise TypeError(
                f"{self.spec.name}: mask must be an attnzoo.Mask or None, got {type(mask).__name__}"
            )
        bad = [k for k in mask.kinds if k not in self.spec.masks]
        if bad:
            raise ValueError(
                f"{self.spec.name} does not support mask kind(s) {bad}; supported: {', '.join(self.spec.masks)}"
            )
        if mask.causal != self.cfg.causal:
            raise ValueError(
                f"{self.spec.name}: mask.causal={mask.causal} disagrees with the mixer's causal="
                f"{self.cfg.causal}; build the mixer with causal={mask.causal}"
            )

    # ---- streaming ------------------------------------------------------------------------
    def init_state(self, batch_size: int, **kwargs: Any) -> Any:
        raise ValueError(
            f"{self.spec.name} has no streaming state (spec.state='none'); use forward() instead"
        )

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        raise ValueError(
            f"{self.spec.name} has no streaming state (spec.state='none'); use forward() instead"
        )

    def state_options(
        self, batch_size: int, options: dict[str, Any]
    ) -> tuple[torch.device, torch.dtype]:
        """Check ``init_state(batch_size, **options)``; returns its ``(device, dtype)``, which
        default to the mixer's parameters'."""
        name = f"{self.spec.name}.init_state"
        unknown = set(options) - {"device", "dtype"}
        if unknown:
            raise TypeError(f"{name}: unknown options {sorted(unknown)}; allowed: device, dtype")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{name}: batch_size must be a positive int, got {batch_size!r}")
        ref = next(self.parameters(), None)
        device = options.get("device", ref.device if ref is not None else torch.device("cpu"))
        dtype = options.get("dtype", ref.dtype if ref is not None else torch.get_default_dtype())
        return torch.device(device), dtype

    def check_step(self, x_t: Tensor, state: Any, state_type: type, batch_field: str) -> None:
        """Check ``step(x_t, state)``: the state's type, ``x_t [B, D]``, and that the batch
        matches the state's tensor ``state.<batch_field>`` (batch first)."""
        name = f"{self.spec.name}.step"
        if not isinstance(state, state_type):
            raise TypeError(
                f"{name}: state must come from init_state(), got {type(state).__name__}"
            )
        batch = getattr(state, batch_field).shape[0]
        if not isinstance(x_t, Tensor) or x_t.dim() != 2:
            raise ValueError(f"{name}: x_t must be [B, D], got {getattr(x_t, 'shape', x_t)}")
        if x_t.shape[0] != batch:
            raise ValueError(f"{name}: x_t batch {x_t.shape[0]} differs from the state's {batch}")
        self.check_input(x_t[:, None])

    # ---- accounting -----------------------------------------------------------------------
    def flops(self, batch: int, T: int, S: int | None = None, mask: Mask | None = None) -> int:
        """Analytic FLOPs of one forward call (see :meth:`MixerSpec.flops`)."""
        return self.spec.flops(self.cfg, batch, T, S, mask)
