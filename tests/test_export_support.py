"""``ExportSupport``: the spec's declaration of what exports (the contract test
``tests/contract/test_export.py`` holds every block to it)."""

from __future__ import annotations

import dataclasses

import pytest

import attnzoo as az
from attnzoo.registry import register_mixer, unregister_mixer


def test_defaults_say_everything_exports() -> None:
    support = az.ExportSupport()
    assert support.summary == "yes"
    assert all(support.works(step) for step in ("torch", "dynamic", "onnx"))
    assert support.to_dict() == {"torch": "", "dynamic": "", "onnx": ""}


@pytest.mark.parametrize(
    "kwargs,summary",
    [
        ({"dynamic": "loops over T"}, "static sizes only"),
        ({"onnx": "no ONNX op"}, "torch.export only"),
        ({"dynamic": "loops over T", "onnx": "no ONNX op"}, "torch.export, static sizes only"),
        ({"torch": "data-dependent branch"}, "no"),
    ],
)
def test_summary(kwargs: dict[str, str], summary: str) -> None:
    assert az.ExportSupport(**kwargs).summary == summary


def test_a_torch_reason_is_every_steps_reason() -> None:
    support = az.ExportSupport(torch="branches on values")
    assert [support.reason(s) for s in ("torch", "dynamic", "onnx")] == ["branches on values"] * 3
    with pytest.raises(ValueError, match="step must be one of .* got 'tflite'"):
        support.reason("tflite")


def test_reasons_are_checked() -> None:
    with pytest.raises(TypeError, match="ExportSupport: onnx must be a reason \\(str"):
        az.ExportSupport(onnx=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dynamic reason must not be blank"):
        az.ExportSupport(dynamic="  ")


def test_every_spec_declares_it_and_its_dict_carries_it() -> None:
    for spec in az.list_mixers():
        assert isinstance(spec.export, az.ExportSupport)
        assert spec.to_dict()["export"] == dataclasses.asdict(spec.export)


@dataclasses.dataclass(frozen=True)
class ProbeConfig(az.MixerConfig):
    """A config of its own: registering sets ``config.mixer_name``."""


def test_register_mixer_takes_only_an_export_support() -> None:
    spec = az.get_spec("softmax")
    kwargs = {"config": ProbeConfig, "family": "softmax", "complexity": "-", "paper": spec.paper,
              "peer": "-", "flops": spec.flops_fn}  # fmt: skip
    with pytest.raises(TypeError, match="'_export_probe'\\): export must be an ExportSupport, got"):
        register_mixer("_export_probe", export={"onnx": "no"}, **kwargs)  # type: ignore[arg-type]
    try:
        deco = register_mixer("_export_probe", export=az.ExportSupport(onnx="no"), **kwargs)

        @deco
        class Probe(az.Mixer):
            pass

        assert az.get_spec("_export_probe").export.summary == "torch.export only"
    finally:
        unregister_mixer("_export_probe")
