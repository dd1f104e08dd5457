"""The typed [preprocessing] contract: kinds, checks against the inputs, the manifest record."""

from __future__ import annotations

import pytest

from mobex.bundle.manifest import Manifest
from mobex.errors import RecipeError
from mobex.preprocessing import (
    AudioPreprocessing,
    ImagePreprocessing,
    NoPreprocessing,
    TabularPreprocessing,
    parse_preprocessing,
)
from mobex.recipe import load_recipe

IMAGE = {"kind": "image", "resize": 256, "crop": 224, "scale": 255.0, "mean": [0.5] * 3, "std": [0.5] * 3}


def test_kinds_and_the_older_keys() -> None:
    assert isinstance(parse_preprocessing({}), NoPreprocessing)
    legacy = parse_preprocessing({"kind": "image", "description": "8x8 digits", "range": [0.0, 1.0]})
    assert isinstance(legacy, ImagePreprocessing) and not legacy.describes_pixels
    assert legacy.value_ranges() == (0.0, 1.0)
    assert isinstance(parse_preprocessing({"kind": "tabular", "feature_names": ["a"]}), TabularPreprocessing)
    audio = parse_preprocessing({"kind": "audio", "sample_rate": 16000, "window": 16000, "features": "log-mel"})
    assert isinstance(audio, AudioPreprocessing) and audio.sample_size() == 64 * 98


def test_the_image_contract_maps_pixels_like_its_formula() -> None:
    contract = parse_preprocessing(IMAGE)
    a, b = contract.pixel_mapping()
    for pixel in (0.0, 128.0, 255.0):
        assert abs(pixel * a[0] + b[0] - (pixel / 255.0 - 0.5) / 0.5) < 1e-12
    assert contract.implied_range() == pytest.approx((-1.0, 1.0))
    assert contract.sample_shape() == [3, 224, 224]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"kind": "picture"}, "kind = 'picture' is not a preprocessing kind"),
        ({**IMAGE, "colour": "RGB"}, "colour: unknown key for kind = 'image'"),
        ({**IMAGE, "mean": [0.5, 0.5]}, "mean: give 1 value or 3"),
        ({**IMAGE, "std": [0.0]}, "std: every value must be > 0"),
        ({**IMAGE, "layout": "CHW"}, "layout: Input should be 'NCHW' or 'NHWC'"),
        ({"kind": "audio", "sample_rate": 8000, "window": 100, "features": "log-mel"}, "n_fft (400) is longer"),
        ({"range": [1.0, 0.0]}, "expected [lo, hi] with lo < hi"),
    ],
)
def test_mistakes_name_the_key(table: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        parse_preprocessing(table)


def test_the_recipe_checks_the_contract_against_its_inputs(sample_copy) -> None:
    folder = sample_copy("digits_cnn")
    recipe = folder / "recipe.toml"
    text = recipe.read_text()
    recipe.write_text(text.replace("range = [0.0, 1.0]", 'scale = 16.0\ncolor = "L"\ncrop = 6'))
    with pytest.raises(
        RecipeError, match=r"the image steps give samples of shape \[1, 6, 6\].*input 'image' has shape"
    ):
        load_recipe(recipe)
    recipe.write_text(text.replace("range = [0.0, 1.0]", 'scale = 16.0\ncolor = "L"\ncrop = 8'))
    contract = load_recipe(recipe).preprocessing
    assert isinstance(contract, ImagePreprocessing) and contract.implied_range() == (0.0, 255.0 / 16.0)


def test_the_manifest_records_the_contract_typed() -> None:
    record = parse_preprocessing(IMAGE).record()
    assert record["kind"] == "image" and record["interpolation"] == "bilinear" and record["layout"] == "NCHW"
    assert parse_preprocessing(record) == parse_preprocessing(IMAGE)  # the record parses back to the same contract
    fields = dict(
        name="m",
        version="1.0.0",
        platform="android",
        created="2026-01-01T00:00:00Z",
        task="classification",
        model={
            "path": "model/m.tflite",
            "format": "tflite",
            "quantization": "fp32",
            "minimum_os": {"android_min_sdk": 24},
            "inputs": [{"name": "x", "shape": [1], "dtype": "float32"}],
            "outputs": [{"name": "y", "shape": [1], "dtype": "float32"}],
        },
    )
    Manifest(**fields, preprocessing=record)
    Manifest(**fields, preprocessing={"normalization": {"mean": [0.5]}})  # older free-form tables still read
    with pytest.raises(ValueError, match="mean: give 1 value or 3"):
        Manifest(**fields, preprocessing={**record, "mean": [0.1, 0.2]})
