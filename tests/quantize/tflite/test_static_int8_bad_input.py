"""Bad requests for quantized variants fail with a clear error before any conversion, and write nothing."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from mobex.data import load_validation_and_calibration
from mobex.errors import DataError, RecipeError
from mobex.pipeline import BuildOptions, build
from mobex.recipe import load_recipe
from mobex.targets.tflite import int8_options


def edit(recipe: Path, pattern: str, replacement: str) -> None:
    text = recipe.read_text()
    new = re.sub(pattern, replacement, text, count=1, flags=re.MULTILINE)
    assert new != text, pattern
    recipe.write_text(new)


def test_unknown_variant(sample_copy) -> None:
    folder = sample_copy("digits_cnn")
    edit(
        folder / "recipe.toml", r'^variants = \["fp32", "fp16", "dynamic-int8", "int8"\]', 'variants = ["fp32", "int7"]'
    )
    with pytest.raises(RecipeError, match=r"\[android\]\.variants: unknown TFLite variant 'int7'; valid: .*int8"):
        load_recipe(folder / "recipe.toml")


def test_w8a8_needs_ios17(sample_copy) -> None:
    folder = sample_copy("digits_cnn")
    edit(folder / "recipe.toml", r'^variants = \["fp32", "fp16", "int8-weights"\]', 'variants = ["fp16", "w8a8"]')
    with pytest.raises(RecipeError, match=r"'w8a8' needs minimum_deployment_target = 'iOS17'.*'iOS16'"):
        load_recipe(folder / "recipe.toml")
    edit(folder / "recipe.toml", r'^minimum_deployment_target = "iOS16"', 'minimum_deployment_target = "iOS17"')
    assert load_recipe(folder / "recipe.toml").ios.variants == ["fp16", "w8a8"]


@pytest.mark.parametrize(("key", "value"), [("range_estimation", "entropy"), ("weight_rounding", "adaround")])
def test_quantization_options_are_checked(sample_copy, key: str, value: str) -> None:
    folder = sample_copy("digits_cnn")
    original = (folder / "recipe.toml").read_text()
    (folder / "recipe.toml").write_text(original + f'\n[quantization]\n{key} = "{value}"\n')
    with pytest.raises(RecipeError, match=rf"\[quantization\]\.{key}"):
        load_recipe(folder / "recipe.toml")
    (folder / "recipe.toml").write_text(original + '\n[quantization]\nweight_rounding = "nearest"\n')
    recipe = load_recipe(folder / "recipe.toml")
    assert int8_options(recipe).weight_rounding == "nearest"


@pytest.mark.parametrize(("bad", "message"), [("nan", "NaN"), ("inf", "inf"), ("shape", r"shape \[200, 1, 8\]")])
def test_broken_calibration_data(sample_copy, bad: str, message: str) -> None:
    folder = sample_copy("digits_cnn")
    path = folder / "data" / "calib.npz"
    arrays = dict(np.load(path))
    image = arrays["image"].astype(np.float32)
    if bad == "nan":
        image[3, 0, 2, 2] = np.nan
    elif bad == "inf":
        image[5, 0, 1, 1] = np.inf
    else:
        image = image[:, :, :, 0]
    np.savez(path, **{**arrays, "image": image})
    recipe = load_recipe(folder / "recipe.toml")
    with pytest.raises(DataError, match=message):
        load_validation_and_calibration(recipe)


def test_too_little_calibration_data_stops_the_build_before_conversion(sample_copy, tmp_path: Path) -> None:
    folder = sample_copy("digits_cnn")
    path = folder / "data" / "calib.npz"
    arrays = dict(np.load(path))
    np.savez(path, **{k: v[:10] for k, v in arrays.items()})
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"int8 need at least 32 calibration samples; \[data\]\.calibration has 10"):
        build(load_recipe(folder / "recipe.toml"), BuildOptions(out_dir=out))
    assert not out.exists() or list(out.iterdir()) == []


def build_refuses_nan_in_the_training_data(folder: Path, tmp_path: Path) -> None:
    """Put a NaN into [data].training: the build must stop while the data is checked, and write nothing."""
    path = folder / "data" / "train.npz"
    arrays = dict(np.load(path))
    image = arrays["image"].astype(np.float32)
    image[7, 0, 3, 3] = np.nan
    np.savez(path, **{**arrays, "image": image})
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"\[data\]\.training.*NaN"):
        build(load_recipe(folder / "recipe.toml"), BuildOptions(out_dir=out))
    assert not out.exists() or list(out.iterdir()) == []


def test_broken_finetune_training_data_stops_the_build_before_conversion(sample_copy, tmp_path: Path) -> None:
    """[quantization.finetune] trains on [data].training: NaN in it is refused while the data is checked."""
    folder = sample_copy("digits_cnn")
    (folder / "recipe.toml").write_text(
        (folder / "recipe.toml").read_text() + "\n[quantization.finetune]\nepochs = 1\n"
    )
    build_refuses_nan_in_the_training_data(folder, tmp_path)


def test_broken_training_data_for_the_search_check_stops_the_build_before_conversion(
    sample_copy, tmp_path: Path
) -> None:
    """Without [quantization.finetune], the int8 search still holds out [data].training samples: the data is
    checked up front, and `search_held_out = false` takes it out of the int8 work."""
    from mobex.targets.tflite import TfliteTarget, int8_training_feeds

    folder = sample_copy("digits_cnn")
    recipe = load_recipe(folder / "recipe.toml")
    assert recipe.quantization.finetune is None and recipe.data.training is not None
    training, held_out = int8_training_feeds(TfliteTarget().options(recipe), recipe)
    full = np.load(folder / "data" / "train.npz")["image"]
    assert training is None and len(held_out) == -(-len(full) // 10)
    np.testing.assert_array_equal(held_out[1]["image"][0], full[10])  # every 10th sample
    off = recipe.model_copy(
        update={"quantization": recipe.quantization.model_copy(update={"search_held_out": False})}
    )
    assert int8_training_feeds(TfliteTarget().options(off), off) == (None, None)
    build_refuses_nan_in_the_training_data(folder, tmp_path)
