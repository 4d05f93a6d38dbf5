"""The MetaFormer backbone: shapes, features, per-stage mixers, timm registration, errors, and one
training step with every registered mixer it can take."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from einops import rearrange

import attnzoo as az
from attnzoo.mixers.base import auxiliary_loss
from attnzoo.models import MetaFormer, register_timm_models
from attnzoo.models.metaformer import FlatTokens

TWO_D = [s.name for s in az.list_mixers(layout="grid2d", role="mixer")]
ONE_D = [s.name for s in az.list_mixers(layout="tokens", role="mixer", pattern="noncausal-self")]
ONE_D_REJECTED = [
    s.name for s in az.list_mixers(layout="tokens") if "noncausal-self" not in s.patterns
]
# a 2-D mixer and a 1-D one that accept every grid, for the tests of the backbone itself
MIX2, MIX1 = "l2vit", "softmax"
# image side per mixer where 32 (stage grids 8, 4, 2, 1) is not accepted; others are probed
IMAGE_SIZE: dict[str, int] = {}
CANDIDATE_SIZES = (32, 64)


def tiny(**kwargs: object) -> MetaFormer:
    model = az.create_model("metaformer_tiny", **{"mixer": MIX2, "num_classes": 10, **kwargs})
    assert isinstance(model, MetaFormer)
    return model


def test_list_models() -> None:
    assert az.list_models() == ["metaformer3d_tiny", "metaformer_small", "metaformer_tiny"]
    small = az.create_model("metaformer_small", mixer=MIX2)
    assert small.dims == (64, 128, 320, 512) and small.depths == (2, 2, 6, 2)
    assert tiny().dims == (32, 64, 128, 256) and tiny().depths == (1, 1, 2, 1)


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (33, 47)])
def test_logits_shape(size: tuple[int, int]) -> None:
    model = tiny(mixer=(MIX2, MIX1, MIX2, MIX1))
    x = torch.randn(2, 3, *size)
    y = model(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    feats = model.forward_features(x)
    assert feats.shape[:2] == (2, 256)
    torch.testing.assert_close(model.forward_head(feats), y)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 256)


def test_float64() -> None:
    model = tiny().double()
    assert model(torch.randn(2, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


def test_features_only_matches_the_full_network() -> None:
    full = tiny().eval()
    feat = tiny(features_only=True, out_indices=(1, -1)).eval()
    missing, unexpected = feat.load_state_dict(full.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("head.") for k in unexpected)
    assert feat.head is None
    assert feat.feature_info == [
        {"num_chs": 64, "reduction": 8, "module": "stages.1"},
        {"num_chs": 256, "reduction": 32, "module": "stages.3"},
    ]
    x = torch.randn(2, 3, 64, 96)
    got = feat(x)
    assert [tuple(t.shape) for t in got] == [(2, 64, 8, 12), (2, 256, 2, 3)]
    want = [rearrange(t, "b h w c -> b c h w") for t in full._stages(x)]
    torch.testing.assert_close(got[0], want[1])
    torch.testing.assert_close(got[1], want[3])
    everything = tiny(features_only=True)
    shapes = [tuple(t.shape) for t in everything(torch.randn(1, 3, 64, 64))]
    assert shapes == [(1, 32, 16, 16), (1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2)]


def test_features_only_builds_only_the_stages_it_returns() -> None:
    model = tiny(features_only=True, out_indices=(0, 1)).eval()
    assert len(model.stages) == 2
    # the last returned stage has stride 8, so 8x8 images are enough
    assert [tuple(t.shape) for t in model(torch.randn(1, 3, 8, 8))] == [
        (1, 32, 2, 2),
        (1, 64, 1, 1),
    ]


def test_per_stage_mixers_and_kwargs() -> None:
    model = tiny(
        mixer=[MIX2, MIX2, MIX1, MIX1],
        mixer_kwargs=[{"num_heads": 2}, None, {"num_heads": 4}, {}],
    )
    mixers = [[b.mixer for b in stage.blocks] for stage in model.stages]
    assert [len(m) for m in mixers] == [1, 1, 2, 1]
    assert [m[0].cfg.heads if not isinstance(m[0], FlatTokens) else None for m in mixers[:2]] == [
        2,
        az.build_mixer(MIX2, d_model=64).cfg.heads,
    ]
    assert all(isinstance(m, FlatTokens) for m in mixers[2] + mixers[3])
    assert [m.mixer.cfg.heads for m in mixers[2]] == [4, 4]
    assert mixers[3][0].mixer.cfg.d_model == 256
    same = tiny(mixer_kwargs={"num_heads": 2})
    assert {b.mixer.cfg.heads for s in same.stages for b in s.blocks} == {2}


def test_one_d_mixer_is_non_causal_over_row_major_tokens() -> None:
    """Built with causal=False: the last pixel influences the first one."""
    model = tiny(mixer=MIX1).eval()
    block = model.stages[0].blocks[0]
    assert isinstance(block.mixer, FlatTokens) and block.mixer.mixer.cfg.causal is False
    x = torch.randn(1, 4, 5, 32)
    x2 = x.clone()
    x2[:, -1, -1] += 1.0
    y, y2 = block.mixer(x), block.mixer(x2)
    assert not torch.allclose(y[:, 0, 0], y2[:, 0, 0])


def test_classifier_api_and_regularisers() -> None:
    model = tiny(layer_scale_init=1e-5, drop_path_rate=0.2, drop_rate=0.1)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert model(x).shape == (2, 10)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3
    model.reset_classifier(0)
    assert model(x).shape == (2, 256)
    assert tiny(num_classes=0)(x).shape == (2, 256)


def test_timm_create_model() -> None:
    assert register_timm_models() is True
    assert register_timm_models() is True  # idempotent
    assert {"attnzoo_metaformer_tiny", "attnzoo_metaformer_small"} <= set(
        timm.list_models("attnzoo_*")
    )
    model = timm.create_model("attnzoo_metaformer_tiny", mixer=MIX2, num_classes=7)
    assert isinstance(model, MetaFormer) and model.mixers == (MIX2,) * 4
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    feats = timm.create_model(
        "attnzoo_metaformer_small", mixer=MIX2, features_only=True, out_indices=(0, 1)
    )
    assert [t.shape[1] for t in feats(torch.randn(1, 3, 64, 64))] == [64, 128]
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["input_size"] == (3, 224, 224)
    with pytest.raises(ValueError, match="no pretrained weights, got pretrained=True"):
        timm.create_model("attnzoo_metaformer_tiny", pretrained=True)


def test_timm_is_never_imported_by_attnzoo() -> None:
    script = (
        "import sys, attnzoo, attnzoo.models\n"
        "assert 'timm' not in sys.modules\n"
        "import timm\n"
        "assert not timm.is_model('attnzoo_metaformer_tiny')\n"
        "assert attnzoo.models.register_timm_models()\n"
        "assert timm.create_model('attnzoo_metaformer_tiny', mixer='softmax').num_classes == 1000\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    # timm imported first: importing attnzoo registers the models by itself
    script = "import timm, attnzoo\nassert timm.is_model('attnzoo_metaformer_small')\n"
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def test_register_timm_models_without_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm.models", None)
    assert register_timm_models() is False


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"mixer": "l2vt"}, ValueError, r"unknown mixer 'l2vt' \(did you mean 'l2vit'"),
        ({"mixer": (MIX2, MIX2)}, ValueError, r"mixer needs one entry per stage \(4\), got 2"),
        ({"mixer": 3}, TypeError, r"mixer must be .* got 3"),
        ({"mixer": (MIX2, MIX2, 3, MIX2)}, TypeError, r"mixer for stage 2 must be .* got 3"),
        ({"mixer_kwargs": [{}, None]}, ValueError, r"mixer_kwargs needs one entry .* got 2"),
        ({"mixer_kwargs": {"num_head": 2}}, TypeError, r"'num_head' \(did you mean 'num_heads'"),
        ({"mixer_kwargs": {"d_model": 8}}, TypeError, r"must not set 'd_model'.*d_model=8"),
        ({"mixer_kwargs": {"causal": True}}, TypeError, r"must not set 'causal'"),
        ({"mixer_kwargs": "heads"}, TypeError, r"mixer_kwargs must be .*'heads'"),
        ({"mixer_kwargs": {"num_heads": 3}}, ValueError, r"stage 0 .*num_heads=3"),
        ({"dims": (32, 64, 128)}, ValueError, r"dims needs one entry per stage \(4\), got 3"),
        ({"dims": 32}, TypeError, r"dims must be a sequence of 4 ints.*got 32"),
        ({"depths": (1, 1, 0, 1)}, ValueError, r"depths\[2\] must be an int >= 1, got 0"),
        ({"num_classes": -1}, ValueError, r"num_classes must be an int >= 0, got -1"),
        ({"drop_path_rate": 1.5}, ValueError, r"drop_path_rate must be in \[0, 1\), got 1.5"),
        ({"out_indices": (4,), "features_only": True}, ValueError, r"out_indices .* got \(4,\)"),
        ({"out_indices": (1, -3), "features_only": True}, ValueError, r"distinct"),
        ({"mixr": MIX2}, TypeError, r"unknown argument 'mixr' \(did you mean 'mixer'"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        tiny(**kwargs)


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'metaformer_tiy' \(did you mean"):
        az.create_model("metaformer_tiy")


@pytest.mark.parametrize("name", ONE_D_REJECTED)
def test_one_d_mixer_without_noncausal_self_is_rejected(name: str) -> None:
    patterns = az.get_spec(name).patterns
    want = f"'{name}' (tokens, role mixer) has patterns {patterns}"
    with pytest.raises(ValueError, match=re.escape(want)):
        tiny(mixer=(MIX2, MIX2, name, MIX2))


@pytest.mark.parametrize(
    "shape,match",
    [
        ((1, 3, 16, 64), r"H=16, W=64 is too small.* must be >= 32"),
        ((1, 3, 64, 31), r"H=64, W=31 is too small"),
        ((1, 1, 64, 64), r"x must be \[B, 3, H, W\].*\(1, 1, 64, 64\)"),
        ((3, 64, 64), r"x must be \[B, 3, H, W\]"),
    ],
)
def test_bad_images(shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny()(torch.randn(shape))


def _image_size(name: str) -> int:
    """The table's size for ``name``, else the first candidate whose stage grids it accepts."""
    if name in IMAGE_SIZE:
        return IMAGE_SIZE[name]
    errors = []
    with torch.no_grad(), torch.random.fork_rng():
        for size in CANDIDATE_SIZES:
            model = az.create_model("metaformer_tiny", mixer=name, num_classes=10)
            try:
                model(torch.randn(2, 3, size, size))
            except ValueError as e:
                errors.append(f"{size}: {e}")
                continue
            return size
    raise AssertionError(f"{name}: metaformer_tiny rejects every image size tried: {errors}")


@pytest.mark.parametrize("name", TWO_D + ONE_D)
def test_one_training_step_with_every_mixer(name: str) -> None:
    size = _image_size(name)
    model = az.create_model("metaformer_tiny", mixer=name, num_classes=10)
    model.train()
    x, target = torch.randn(2, 3, size, size), torch.tensor([3, 7])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = F.cross_entropy(model(x), target)
    assert torch.isfinite(loss)
    aux = auxiliary_loss(model)  # what some mixers train through (sparsifiner's predictor)
    (loss if aux is None else loss + aux).backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}: parameter {pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name}: parameter {pname}: non-finite gradient"
    opt.step()
    with torch.no_grad():
        after = F.cross_entropy(model(x), target)
    assert torch.isfinite(after) and after.item() != loss.item()


# ---- the volume backbone -----------------------------------------------------------------------
def tiny3d(**kw: object) -> torch.nn.Module:
    return az.create_model("metaformer3d_tiny", dims=(8, 16, 16, 16), num_classes=4, **kw)


def test_volume_backbone_runs_a_tokens_mixer_over_the_flattened_volume() -> None:
    model = tiny3d(mixer=ONE_D[0])
    x = torch.randn(2, 1, 32, 32, 40)
    assert model(x).shape == (2, 4)
    feats = tiny3d(mixer=ONE_D[0], features_only=True)(x)
    assert [f.shape[2:] for f in feats] == [(8, 8, 10), (4, 4, 5), (2, 2, 3), (1, 1, 2)]


def test_volume_backbone_refuses_image_mixers_and_images() -> None:
    with pytest.raises(ValueError, match=rf"mixer {TWO_D[0]!r} takes grid2d inputs; a grid3d"):
        tiny3d(mixer=TWO_D[0])
    with pytest.raises(ValueError, match=r"x must be \[B, 1, D, H, W\] \(channels-first volumes\)"):
        tiny3d(mixer=ONE_D[0])(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="D=16, H=32, W=32 is too small"):
        tiny3d(mixer=ONE_D[0])(torch.randn(2, 1, 16, 32, 32))
    with pytest.raises(ValueError, match="layout must be 'grid2d' or 'grid3d', got 'tokens'"):
        az.create_model("metaformer_tiny", mixer=ONE_D[0], layout="tokens")
