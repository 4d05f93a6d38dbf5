"""The backbones' registry: each model registers itself where it is defined
(:func:`register_model`); :func:`attnzoo.create_model` and :func:`attnzoo.list_models` read it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import nn

from attnzoo.text import add

MODELS: dict[str, Callable[..., nn.Module]] = {}

F = Callable[..., Any]


def register_model(name: str, **defaults: Any) -> Callable[[F], F]:
    """Decorator adding a backbone constructor (keyword arguments only) under ``name``; the
    returned constructor fills in ``defaults`` for the keywords a call leaves out (a backbone's
    default mixer, widths and depths are part of its registration)."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def build(**kwargs: Any) -> Any:
            return fn(**{**defaults, **kwargs})

        return add(MODELS, name, build, "register_model")

    return deco
