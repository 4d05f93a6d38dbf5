"""The registry and config layer: lookups, filters, registration and config validation."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest
import torch

import attnzoo as az
from attnzoo.config import MixerConfig
from attnzoo.registry import register_mixer


def test_list_filters() -> None:
    names = [s.name for s in az.list_mixers()]
    assert names == sorted(names) and {"softmax", "sigmoid"} <= set(names)
    assert [s.name for s in az.list_mixers(family="dense")] == ["sigmoid"]
    assert az.list_mixers(dims=2) == [s for s in az.list_mixers() if s.dims == 2]
    assert {s.name for s in az.list_mixers(pattern="causal-cross", state="growing")} >= {
        "softmax",
        "sigmoid",
    }
    assert {s.name for s in az.list_mixers(mask="prefix-lm")} >= {"softmax", "sigmoid"}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"dims": 4}, "dims must be one of"),
        ({"pattern": "causal"}, "pattern must be one of"),
        ({"family": "magic"}, "family must be one of"),
        ({"state": "big"}, "state must be one of"),
        (
            {"layout": "image"},
            r"layout must be one of \('tokens', 'grid2d', 'grid3d'\), got 'image'",
        ),
        ({"role": "head"}, r"role must be one of \('mixer', 'fusion', 'pooling'\), got 'head'"),
    ],
)
def test_list_filter_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        az.list_mixers(**kwargs)


def test_get_spec_unknown_suggests() -> None:
    with pytest.raises(ValueError, match="unknown mixer 'sigmod' \\(did you mean 'sigmoid'"):
        az.get_spec("sigmod")
    with pytest.raises(TypeError, match="mixer name must be a str"):
        az.get_spec(3)  # type: ignore[arg-type]


def test_spec_fields() -> None:
    s = az.get_spec("softmax")
    assert s.exact and s.state == "growing" and s.dims == 1 and set(s.patterns) == set(az.PATTERNS)
    assert s.paper.year == 2017 and s.paper.url.startswith("https://")
    d = s.to_dict()
    assert d["name"] == "softmax" and "num_heads" in d["config_keys"]


def test_register_rejects_bad_specs() -> None:
    @dataclasses.dataclass(frozen=True)
    class Cfg(MixerConfig):
        pass

    common = dict(
        config=Cfg, complexity="-", paper=az.Paper("t", 2026, "-"), peer="-", flops=lambda *a: 0
    )
    with pytest.raises(ValueError, match="already registered"):
        register_mixer("softmax", family="softmax", dims=1, patterns=("noncausal-self",), **common)
    with pytest.raises(ValueError, match="family must be one of"):
        register_mixer("x1", family="magic", dims=1, patterns=("noncausal-self",), **common)
    with pytest.raises(ValueError, match="dims must be 1, 2 or 3, got 4"):
        register_mixer("x2", family="other", dims=4, patterns=("noncausal-self",), **common)
    with pytest.raises(ValueError, match="layout must be one of .*'grid3d'.*got 'grid4d'"):
        register_mixer("x2", family="other", layout="grid4d", **common)
    with pytest.raises(ValueError, match="dims=1 contradicts layout='grid2d'"):
        register_mixer("x2", family="other", dims=1, layout="grid2d", **common)
    with pytest.raises(ValueError, match="role must be one of .*got 'pool'"):
        register_mixer("x2", family="other", role="pool", **common)
    with pytest.raises(ValueError, match="patterns of a fusion block must be a non-empty subset"):
        register_mixer("x2", family="other", role="fusion", patterns=("noncausal-self",), **common)
    with pytest.raises(ValueError, match="context_layout must be one of .*got 'grid2d' with"):
        register_mixer("x2", family="other", context_layout="grid2d", **common)
    with pytest.raises(ValueError, match="patterns of a mixer block must be a non-empty subset"):
        register_mixer("x3", family="other", dims=1, patterns=("self",), **common)
    with pytest.raises(ValueError, match="unknown mask kinds"):
        register_mixer(
            "x4",
            family="other",
            dims=1,
            patterns=("noncausal-self",),
            masks=("diagonal",),
            **common,
        )


@dataclasses.dataclass(frozen=True)
class _Cfg(MixerConfig):
    width: int | None = None
    ratio: float = 1.0
    sizes: tuple[int, ...] = (1, 2)
    mode: Literal["a", "b"] = "a"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"width": 2.5}, "'width' must be int \\| None, got 2.5"),
        ({"width": True}, "'width' must be int \\| None, got True"),
        ({"ratio": "1"}, "'ratio' must be float, got '1'"),
        ({"sizes": (1, "2")}, "'sizes' must be tuple\\[int, ...\\]"),
        ({"mode": "c"}, "'mode' must be 'a' \\| 'b', got 'c'"),
        ({"causal": 1}, "'causal' must be bool, got 1"),
        ({"d_model": "64"}, "'d_model' must be int"),
    ],
)
def test_config_type_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        _Cfg(**{"d_model": 8, **kwargs})


def test_config_values_and_round_trip() -> None:
    with pytest.raises(ValueError, match="d_model must be >= 1, got 0"):
        _Cfg(d_model=0)
    c = _Cfg.from_kwargs(d_model=8, ratio=2, sizes=[3, 4])  # int -> float, list -> tuple
    assert c.ratio == 2.0 and isinstance(c.ratio, float) and c.sizes == (3, 4)
    assert _Cfg.from_json(c.to_json()) == c
    assert c.replace(mode="b").mode == "b"
    with pytest.raises(TypeError, match="unknown config key 'widht' \\(did you mean 'width'"):
        _Cfg.from_kwargs(d_model=8, widht=3)


def test_mixer_from_json_errors() -> None:
    with pytest.raises(ValueError, match="must be an object with a 'mixer' key"):
        az.mixer_from_json("[1, 2]")
    text = az.build_mixer("softmax", d_model=32).cfg.to_json()
    with pytest.raises(ValueError, match="config JSON is for mixer 'softmax', not 'sigmoid'"):
        az.get_spec("sigmoid").config.from_json(text)


def test_moved_modules_say_where_they_went() -> None:
    """Interface v2 split DaViT's file and renamed the README generator: importing the old
    names fails with the new ones."""
    import importlib

    for old, new in (("attnzoo.mixers.vision.davit", "davit_channel"),
                     ("attnzoo.docs", "attnzoo.readme_table")):  # fmt: skip
        with pytest.raises(ImportError, match=new):
            importlib.import_module(old)


def test_layouts_and_roles_refuse_what_they_cannot_be() -> None:
    from attnzoo.registry import registered
    from attnzoo.spec import layout

    with pytest.raises(ValueError, match="grid2d: sizes must give 2 axes"):
        az.LAYOUTS["grid2d"].example(1, (4,), 8)
    with pytest.raises(ValueError, match="grid3d: tokens must be >= 1, got 0"):
        az.LAYOUTS["grid3d"].sizes_for(0)
    with pytest.raises(ValueError, match="unknown layout 'grid4d'; known: tokens, grid2d, grid3d"):
        layout("grid4d")
    with pytest.raises(ValueError, match="a role named .mixer. is already registered"):
        az.register_role(az.ROLES["mixer"])
    with pytest.raises(ValueError, match="context must be 'optional', 'required' or 'none'"):
        az.register_role(az.Role("relation", "x -> x", "sometimes", False, az.PATTERNS, ()))
    with pytest.raises(ValueError, match=r"names already in the registry: \['softmax'\]"):
        with registered(dataclasses.replace(az.get_spec("sigmoid"), name="softmax")):
            pass


def test_layouts_flatten_row_major_and_back() -> None:
    x = torch.arange(2 * 3 * 4 * 5 * 2).view(2, 3, 4, 5, 2)
    grid3d = az.LAYOUTS["grid3d"]
    t = grid3d.flatten(x)
    assert t.shape == (2, 60, 2) and torch.equal(t[0, 1], x[0, 0, 0, 1])  # the last axis fastest
    assert torch.equal(grid3d.unflatten(t, grid3d.sizes(x)), x)
    assert grid3d.sizes_for(1000) == (10, 10, 10) and az.LAYOUTS["grid2d"].sizes_for(1000) == (
        32,
        32,
    )
