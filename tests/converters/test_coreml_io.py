"""Core ML image inputs and classifier outputs (mobex.converters.coreml_io), read back from the spec and run
in the MIL reference interpreter with float feeds (the validation data) and uint8 pixels (what an app has)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mobex.converters.coreml import CoreMLMetadata, convert_coreml, read_interface
from mobex.preprocessing import parse_preprocessing
from mobex.runtime.mil.interpreter import MilReferenceRunner

pytestmark = pytest.mark.slow  # three Core ML conversions


class Tiny(torch.nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(image)).mean(dim=(2, 3)))


def _convert(tmp_path: Path, contract: dict, channels: int = 3, **options):
    torch.manual_seed(0)
    model = Tiny(channels).eval()
    pixels = np.random.default_rng(1).integers(0, 256, (4, channels, 16, 16)).astype(np.uint8)
    c = parse_preprocessing(contract)
    a, b = (np.array(v).reshape(1, -1, 1, 1) for v in c.pixel_mapping())
    floats = (pixels * a + b).astype(np.float32)
    meta = CoreMLMetadata(
        name="tiny", version="1.0.0", labels=["a", "b", "c"], preprocessing=c, task="classification", **options
    )
    variant = convert_coreml(
        model, {"image": torch.from_numpy(floats[:1])}, tmp_path / "Tiny.mlpackage", precision="fp32",
        output_names=["logits"], metadata=meta,
    )  # fmt: skip
    with torch.no_grad():
        reference = model(torch.from_numpy(floats)).numpy()
    return variant, pixels, floats, reference


def test_uniform_std_is_the_image_types_own_scale_and_bias(tmp_path: Path) -> None:
    import coremltools as ct

    contract = {"kind": "image", "scale": 255.0, "mean": [0.5], "std": [0.5], "color": "BGR"}
    variant, pixels, floats, reference = _convert(tmp_path, contract, output_descriptions={"logits": "3 scores"})
    spec = ct.utils.load_spec(str(variant.path))
    described = {o.name: o.shortDescription for o in spec.description.output}
    assert described == {"classLabel": "the label with the highest score", "classLabel_probs": "3 scores"}
    image = spec.description.input[0].type.imageType
    assert ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.colorSpace) == "BGR"
    assert any("pixel * 0.00784314 + [-1.0, -1.0, -1.0]" in n for n in variant.notes)
    assert read_interface(variant.path)["image_inputs"]["image"]["color_space"] == "BGR"
    runner = MilReferenceRunner(variant.path)
    for i in range(4):
        (from_floats,) = runner.run({"image": floats[i : i + 1]})
        (from_pixels,) = runner.run({"image": pixels[i : i + 1]})
        np.testing.assert_allclose(from_floats, reference[i : i + 1], atol=1e-5)
        np.testing.assert_allclose(from_pixels, reference[i : i + 1], atol=1e-5)
        native = runner.run_native({"image": pixels[i : i + 1].transpose(0, 2, 3, 1)})  # HWC pixels work too
        assert native["classLabel"] == "abc"[int(np.argmax(reference[i]))]


def test_grayscale_and_per_channel_std_inside_the_model(tmp_path: Path) -> None:
    import coremltools as ct

    contract = {"kind": "image", "scale": 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    variant, _, floats, reference = _convert(tmp_path / "rgb", contract)
    assert any("then (x - mean) / std per channel in the model" in n for n in variant.notes)
    (out,) = MilReferenceRunner(variant.path).run({"image": floats[:1]})
    np.testing.assert_allclose(out, reference[:1], atol=1e-5)

    gray = {"kind": "image", "scale": 16.0, "color": "L"}
    variant, pixels, _, reference = _convert(tmp_path / "gray", gray, channels=1)
    spec = ct.utils.load_spec(str(variant.path))
    space = spec.description.input[0].type.imageType.colorSpace
    assert ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(space) == "GRAYSCALE"
    (out,) = MilReferenceRunner(variant.path).run({"image": pixels[:1]})
    np.testing.assert_allclose(out, reference[:1], atol=1e-5)


def test_the_options_turn_both_off(tmp_path: Path) -> None:
    import coremltools as ct

    contract = {"kind": "image", "scale": 255.0}
    variant, _, floats, reference = _convert(tmp_path, contract, image_input=False, classifier=False)
    spec = ct.utils.load_spec(str(variant.path))
    assert spec.description.input[0].type.WhichOneof("Type") == "multiArrayType"
    assert not spec.description.predictedFeatureName and [o.name for o in spec.description.output] == ["logits"]
    assert read_interface(variant.path) == {}
    (out,) = MilReferenceRunner(variant.path).run({"image": floats[:1]})
    np.testing.assert_allclose(out, reference[:1], atol=1e-5)
