"""The one block interface (DESIGN §1): ``forward(x, context=None, *, mask=None)``.

:class:`Mixer.forward` runs every check a call needs (the pattern, ``x`` and ``context`` against
the spec's layouts and widths, the mask's kinds) and then calls the mechanism's own
:meth:`Mixer.mix`. Blocks that stream derive from :class:`StreamingMixer`, which does the same
for ``init_state`` / ``step`` around ``new_state`` and ``advance``. Blocks whose spec says
``attention_maps=True`` implement :meth:`Mixer.maps`, called through :meth:`Mixer.attention_maps`.

Calls that no mechanism needs to handle itself: an input with no tokens (a ``0 x 5`` grid, ``T =
0``) or no samples gets an empty output of the role's shape without calling ``mix`` (gradients
stay connected: every parameter gets a zero gradient); an input whose dtype differs from the
mixer's parameters, a bfloat16 / float16 call the spec's ``low_precision`` refuses (the dtype,
or the config's ``impl`` in it), a BatchNorm in training mode that would see one value per
channel, and a streaming state of the wrong shape raise errors that say what to change.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from attnzoo.config import MixerConfig
from attnzoo.ops.masks import Mask
from attnzoo.spec import LAYOUTS, MixerSpec

# the dtypes a spec's low_precision declares, by their names there
LOW = {torch.bfloat16: "bfloat16", torch.float16: "float16"}


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
        ``context`` in ``spec.context_layout`` -> ``x``'s shape (``[B, D]`` for pooling).

        An empty output (``x`` has no tokens or no samples; a pooling head only without samples)
        is returned without calling :meth:`mix` (see :meth:`empty_output`)."""
        self.check_call(x, context, mask)
        if x.dtype in LOW:
            self.check_low_precision_impl(x)
        shape = self.spec.role_info.output_shape(tuple(x.shape), self.d_model)
        if math.prod(shape) == 0:
            return self.empty_output(shape, x, context, mask)
        self.check_batchnorm(x)
        return self.mix(x, context, mask)

    def empty_output(
        self, shape: tuple[int, ...], x: Tensor, context: Tensor | None, mask: Mask | None
    ) -> Tensor:
        """Zeros of ``shape`` (which has no elements) for a checked call, connected to ``x``,
        ``context`` and every parameter so that ``backward`` gives each a zero gradient, as a
        call with tokens would. A mask is still checked against the token counts."""
        layout = self.spec.input_layout
        if mask is not None:
            n = layout.tokens(layout.sizes(x))
            ctx_layout = LAYOUTS[self.spec.context_layout or self.spec.layout]
            mask.validate(n, n if context is None else ctx_layout.tokens(ctx_layout.sizes(context)))
        y = x.new_zeros(shape)
        inputs = [x] if context is None else [x, context]
        linked = [t for t in (*inputs, *self.parameters()) if t.requires_grad]
        if linked and torch.is_grad_enabled():
            y = y + sum(t.reshape(-1)[:0].sum().to(y.dtype) for t in linked)
        return y

    def mix(self, x: Tensor, context: Tensor | None, mask: Mask | None) -> Tensor:
        """The mechanism, on checked inputs (see :meth:`forward`)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement mix()")

    def aux_loss(self) -> Tensor | None:
        """An auxiliary training loss of the latest training-mode forward (a scalar in its
        graph, e.g. routing attention's k-means commitment loss), or ``None`` for a block
        without one. Training code adds it to the task loss (:func:`auxiliary_loss`)."""
        return None

    def attention_maps(
        self, x: Tensor, context: Tensor | None = None, *, mask: Mask | None = None
    ) -> AttentionMaps:
        """The attention weights of ``forward(x, context, mask=mask)`` (:class:`AttentionMaps`)."""
        if not self.spec.attention_maps:
            raise ValueError(
                f"{self.spec.name} does not return attention maps (spec.attention_maps=False)"
            )
        self.check_call(x, context, mask)
        self.check_batchnorm(x)
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
        self.check_dtype("x", x)
        if x.dtype in LOW:
            self.check_low_precision(x)
        if context is None:
            return
        LAYOUTS[self.spec.context_layout or self.spec.layout].check(
            name, "context", context, self.context_dim
        )
        self.check_dtype("context", context)
        if context.shape[0] != x.shape[0]:
            raise ValueError(
                f"{name}: context batch {context.shape[0]} differs from x batch {x.shape[0]}"
            )

    def check_dtype(self, arg: str, t: Tensor) -> None:
        """``TypeError`` naming both dtypes and the ``.to()`` fix unless ``t`` has the dtype of
        the mixer's floating-point parameters (any of them, if they differ). Under
        ``torch.autocast`` for ``t``'s device the ops cast for themselves: nothing is checked."""
        first = next(self.parameters(), None)
        if first is not None and first.dtype == t.dtype:  # the usual case, in ~1 µs
            return
        if torch.is_autocast_enabled(t.device.type):
            return
        dtypes = {p.dtype for p in self.parameters() if p.is_floating_point()}
        if not dtypes or t.dtype in dtypes:
            return
        have = sorted(map(str, dtypes))
        raise TypeError(
            f"{self.spec.name}: {arg} is {t.dtype} but the mixer's parameters are "
            f"{' and '.join(have)}; call mixer.to({t.dtype}) or {arg}.to({have[0]})"
        )

    def check_low_precision(self, x: Tensor) -> None:
        """``TypeError`` (block, dtype, reason, supported dtypes) when the spec's
        ``low_precision`` refuses ``x``'s dtype, ``bfloat16`` or ``float16``."""
        reason = self.spec.low_precision_refusal(LOW[x.dtype])
        if reason is not None:
            raise TypeError(reason)

    def check_low_precision_impl(self, x: Tensor) -> None:
        """``TypeError`` (block, impl, dtype, the impls that run) when the config's ``impl`` is
        one the spec's ``low_precision`` refuses in ``x``'s dtype (a float32/float64 kernel)."""
        reason = self.spec.low_precision_refusal(LOW[x.dtype], getattr(self.cfg, "impl", None))
        if reason is not None:
            raise TypeError(reason)

    def check_batchnorm(self, x: Tensor) -> None:
        """``ValueError`` when a BatchNorm that normalises with batch statistics (training mode,
        or no running statistics) would see one value per channel: every BatchNorm of a block
        normalises over the samples and tokens of ``x``, and torch refuses a single value."""
        if x.shape[0] * math.prod(x.shape[1:-1]) != 1:
            return
        for part, m in self.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and (
                m.training or m.running_mean is None
            ):
                fixes = "a batch of more than one sample or an input with more than one token"
                if m.running_mean is not None:
                    fixes += ", or eval mode (mixer.eval(): running statistics)"
                raise ValueError(
                    f"{self.spec.name}: its BatchNorm '{part}' normalises with batch statistics "
                    f"and needs more than one value per channel, but x of shape "
                    f"{tuple(x.shape)} gives one (1 sample x 1 token); use {fixes}"
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

    def state_shapes(self, batch: int, dtype: torch.dtype) -> dict[str, tuple[int, ...] | None]:
        """The shape of every field of a fresh state (:meth:`new_state` on the meta device),
        ``None`` for a field that is not a tensor; ``-1`` marks an axis that is empty in a fresh
        state (a KV cache's tokens), which may have any size. Kept per config, batch and dtype
        (``step`` checks every call)."""
        cache = self.__dict__.setdefault("_state_shapes", {})
        key = (self.cfg, batch, dtype)
        if key not in cache:
            fresh = self.new_state(batch, torch.device("meta"), dtype)
            cache[key] = {
                f.name: tuple(-1 if n == 0 else n for n in t.shape)
                if isinstance(t := getattr(fresh, f.name), Tensor)
                else None
                for f in dataclasses.fields(fresh)
            }
        return cache[key]

    def check_state(self, name: str, state: Any, batch: int, dtype: torch.dtype) -> None:
        """``ValueError`` naming the field, its shape and the expected one unless every field
        of ``state`` has the shape of the same field of a fresh state (:meth:`state_shapes`)."""
        for field, want in self.state_shapes(batch, dtype).items():
            got = getattr(state, field)
            if want is None:
                if isinstance(got, Tensor):
                    raise ValueError(
                        f"{name}: state.{field} is a tensor of shape {tuple(got.shape)}, "
                        "expected none (the state of another configuration?)"
                    )
                continue
            if (
                isinstance(got, Tensor)
                and got.dim() == len(want)
                and all(w in (-1, n) for n, w in zip(got.shape, want, strict=True))
            ):
                continue
            shape = tuple(got.shape) if isinstance(got, Tensor) else repr(got)
            raise ValueError(
                f"{name}: state.{field} has shape {shape}, expected "
                f"({', '.join('t' if w == -1 else str(w) for w in want)})"
                + (" with t tokens kept" if -1 in want else "")
                + "; pass a state from this mixer's init_state() (another width or config?)"
            )

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
        self.check_state(name, state, batch, x_t.dtype)
        y, new = self.advance(x_t, state)
        new.position = state.position + 1
        return y, new


def auxiliary_loss(model: nn.Module) -> Tensor | None:
    """The sum of :meth:`Mixer.aux_loss` over every block in ``model``, or ``None`` when no block
    has one: add it to the task loss before ``backward()``."""
    parts = [
        loss for m in model.modules() if isinstance(m, Mixer) and (loss := m.aux_loss()) is not None
    ]
    return torch.stack(parts).sum() if parts else None
