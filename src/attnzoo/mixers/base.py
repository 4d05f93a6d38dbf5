"""The one block interface (DESIGN §1): ``forward(x, context=None, *, mask=None)``.

:class:`Mixer.forward` runs every check a call needs (the pattern, ``x`` and ``context`` against
the spec's layouts and widths, the mask's kinds) and then calls the mechanism's own
:meth:`Mixer.mix`. Blocks that stream derive from :class:`StreamingMixer`, which does the same
for ``init_state`` / ``step`` around ``new_state`` and ``advance``. Blocks whose spec says
``attention_maps=True`` implement :meth:`Mixer.maps`, called through :meth:`Mixer.attention_maps`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from attnzoo.config import MixerConfig
from attnzoo.ops.masks import Mask
from attnzoo.spec import LAYOUTS, MixerSpec


@dataclasses.dataclass
class AttentionMaps:
    """A block's attention weights for one call.

    ``weights [B, H, N, M]``: head ``h`` of query token ``n`` gives key token ``m`` that weight.
    ``N`` counts ``x``'s tokens and ``M`` the keys' (``x``'s, or ``context``'s for cross
    patterns), each flattened row-major from its layout (:meth:`attnzoo.spec.Layout.flatten`);
    windowed blocks scatter their windows back, so pairs outside a window weigh 0. Implicit
    weights (linear attention and its decayed and gated kinds) are materialised, so only call
    this at small sizes (``O(N·M)`` memory per head).

    When the block's output is exactly the weights applied to values, ``values [B, H, M, V]``
    holds them and ``finish`` maps ``weights @ values`` (``[B, H, N, V]``) to the block's output
    (projections, gates and any positional term the weights do not carry); :meth:`output` then
    reproduces ``forward``. Otherwise both are ``None``.
    """

    weights: Tensor
    values: Tensor | None = None
    finish: Callable[[Tensor], Tensor] | None = None

    @property
    def exact(self) -> bool:
        return self.values is not None and self.finish is not None

    def output(self) -> Tensor:
        """``finish(weights @ values)``: the block's output, recomputed from the maps."""
        if self.values is None or self.finish is None:
            raise ValueError("these attention maps do not decompose the output (no values)")
        return self.finish(self.weights @ self.values)


class Mixer(nn.Module):
    """Base class of every block.

    ``x`` has the spec's ``layout`` and width ``d_model``; cross patterns and fusion blocks take
    ``context`` of ``spec.context_layout`` and width :attr:`context_dim`; causal patterns are
    selected by ``config.causal``. The output has ``x``'s shape, or ``[B, D]`` for pooling.

    A subclass implements :meth:`mix` (and :meth:`maps` if it declares ``attention_maps``).
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

    @property
    def context_dim(self) -> int:
        """Width of ``context`` (``d_model`` unless the config says otherwise)."""
        return getattr(self.cfg, "context_dim", None) or self.cfg.d_model

    def extra_repr(self) -> str:
        return f"name={self.spec.name!r}, cfg={self.cfg.to_dict()}"

    def forward(
        self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None
    ) -> Tensor:
        """Shapes: ``x`` in the spec's layout (``[B, T, D]``, ``[B, h, w, C]``, ...),
        ``context`` in ``spec.context_layout`` -> ``x``'s shape (``[B, D]`` for pooling)."""
        self.check_call(x, context, mask)
        return self.mix(x, context, mask)

    def mix(self, x: Tensor, context: Tensor | None, mask: Mask | None) -> Tensor:
        """The mechanism, on checked inputs (see :meth:`forward`)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement mix()")

    def attention_maps(
        self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None
    ) -> AttentionMaps:
        """The attention weights of ``forward(x, context, mask=mask)`` (:class:`AttentionMaps`)."""
        if not self.spec.attention_maps:
            raise ValueError(
                f"{self.spec.name} does not return attention maps (spec.attention_maps=False)"
            )
        self.check_call(x, context, mask)
        return self.maps(x, context, mask)

    def maps(self, x: Tensor, context: Tensor | None, mask: Mask | None) -> AttentionMaps:
        """The mechanism's attention weights, on checked inputs (see :meth:`attention_maps`)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement maps()")

    # ---- checks shared by every block --------------------------------------------------------
    def check_call(self, x: Tensor, context: Tensor | None, mask: Mask | None) -> str:
        """Every check of a call; returns its pattern."""
        pattern = self.pattern_of(context)
        self.check_input(x, context)
        self.check_mask(mask)
        return pattern

    def pattern_of(self, context: Tensor | None) -> str:
        """The CAB pattern of a call; raises ``ValueError`` if the spec does not support it."""
        pattern = ("causal-" if self.cfg.causal else "noncausal-") + (
            "self" if context is None else "cross"
        )
        if pattern not in self.spec.patterns:
            need = " (a fusion block needs context=)" if self.spec.role == "fusion" else ""
            raise ValueError(
                f"{self.spec.name} does not support pattern {pattern!r}{need}; "
                f"supported patterns: {', '.join(self.spec.patterns)}"
            )
        return pattern

    def check_input(self, x: Tensor, context: Tensor | None = None) -> None:
        """Layout, width and dtype of ``x`` (and ``context``), with messages naming them."""
        name = self.spec.name
        self.spec.input_layout.check(name, "x", x, self.cfg.d_model)
        if context is None:
            return
        LAYOUTS[self.spec.context_layout or self.spec.layout].check(
            name, "context", context, self.context_dim
        )
        if context.shape[0] != x.shape[0]:
            raise ValueError(
                f"{name}: context batch {context.shape[0]} differs from x batch {x.shape[0]}"
            )

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

    # ---- streaming (see StreamingMixer) ------------------------------------------------------
    def init_state(self, batch_size: int, **kwargs: Any) -> Any:
        raise ValueError(
            f"{self.spec.name} has no streaming state (spec.state='none'); use forward() instead"
        )

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        raise ValueError(
            f"{self.spec.name} has no streaming state (spec.state='none'); use forward() instead"
        )

    # ---- accounting ------------------------------------------------------------------------
    def flops(self, batch: int, T: int, S: int | None = None, mask: Mask | None = None) -> int:
        """Analytic FLOPs of one forward call (see :meth:`MixerSpec.flops`)."""
        return self.spec.flops(self.cfg, batch, T, S, mask)


class StreamingMixer(Mixer):
    """Base of blocks whose spec declares a streaming state (``constant`` or ``growing``).

    ``init_state(batch_size, device=, dtype=)`` and ``step(x_t, state)`` check their arguments
    and the pattern (:meth:`stream_check`), then call the mechanism's :meth:`new_state` and
    :meth:`advance`. A state is a dataclass of ``state_type`` whose first tensor field is batch
    first and whose ``position`` field counts the tokens seen (kept here).
    """

    state_type: ClassVar[type]

    def stream_check(self) -> None:
        """Raise ``ValueError`` unless this mixer can stream; the default needs ``causal=True``."""
        if not self.cfg.causal:
            raise ValueError(
                f"{self.spec.name}: step() streams the causal-self pattern; this mixer has "
                "causal=False"
            )

    def new_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Any:
        """The state before any token."""
        raise NotImplementedError

    def advance(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One token on a checked state: ``x_t [B, D] -> (y_t [B, D], next state)``."""
        raise NotImplementedError

    def init_state(self, batch_size: int, **kwargs: Any) -> Any:
        """The state before any token. Keyword options: ``device``, ``dtype`` (default: the
        mixer's parameters')."""
        self.stream_check()
        name = f"{self.spec.name}.init_state"
        unknown = set(kwargs) - {"device", "dtype"}
        if unknown:
            raise TypeError(f"{name}: unknown options {sorted(unknown)}; allowed: device, dtype")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{name}: batch_size must be a positive int, got {batch_size!r}")
        ref = next(self.parameters(), None)
        device = kwargs.get("device", ref.device if ref is not None else torch.device("cpu"))
        dtype = kwargs.get("dtype", ref.dtype if ref is not None else torch.get_default_dtype())
        return self.new_state(batch_size, torch.device(device), dtype)

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One token. Shapes: ``x_t [B, D] -> [B, D]``; equals ``forward(x)[:, t]``."""
        self.stream_check()
        name = f"{self.spec.name}.step"
        if not isinstance(state, self.state_type):
            raise TypeError(
                f"{name}: state must come from init_state(), got {type(state).__name__}"
            )
        batch = next(
            getattr(state, f.name).shape[0]
            for f in dataclasses.fields(state)
            if isinstance(getattr(state, f.name), Tensor)
        )
        if not isinstance(x_t, Tensor) or x_t.dim() != 2:
            raise ValueError(f"{name}: x_t must be [B, D], got {getattr(x_t, 'shape', x_t)}")
        if x_t.shape[0] != batch:
            raise ValueError(f"{name}: x_t batch {x_t.shape[0]} differs from the state's {batch}")
        self.check_input(x_t[:, None])
        y, new = self.advance(x_t, state)
        new.position = state.position + 1
        return y, new
