"""Bad validation/calibration data is refused before conversion, naming the array and the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mobex.data import load_dataset, load_validation_and_calibration
from mobex.errors import DataError
from mobex.recipe import load_recipe


def _rewrite(folder: Path, name: str, **arrays: np.ndarray) -> None:
    path = folder / "data" / name
    with np.load(path) as npz:
        data = {k: npz[k] for k in npz.files}
    data.update(arrays)
    for key, value in list(data.items()):
        if value is None:
            del data[key]
    np.savez(path, **data)


def test_sample_data_loads_with_checks(sample_copy) -> None:
    recipe = load_recipe(sample_copy("digits_cnn") / "recipe.toml")
    validation, calibration = load_validation_and_calibration(recipe)
    assert validation.num_samples > 100
    assert validation.feed(0)["image"].shape == (1, 1, 8, 8)
    assert validation.labels is not None and validation.labels.dtype == np.int64
    names = {c.name for c in validation.checks}
    assert {"validation.image.shape", "validation.image.finite", "validation.labels.range"} <= names
    assert calibration is not validation and calibration.role == "calibration"


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_refused(sample_copy, bad: float) -> None:
    folder = sample_copy("digits_cnn")
    with np.load(folder / "data" / "calib.npz") as npz:
        image = npz["image"].copy()
    image[3, 0, 2, 2] = bad
    _rewrite(folder, "calib.npz", image=image)
    recipe = load_recipe(folder / "recipe.toml")
    with pytest.raises(
        DataError, match=r"\[data\]\.calibration \(calib\.npz\): array 'image' contains 1 (NaN|inf).*sample 3"
    ):
        load_validation_and_calibration(recipe)


def test_wrong_shape_refused(sample_copy) -> None:
    folder = sample_copy("digits_cnn")
    _rewrite(folder, "val.npz", image=np.zeros((10, 8, 8), dtype=np.float32))
    recipe = load_recipe(folder / "recipe.toml")
    with pytest.raises(DataError, match=r"array 'image' has shape \[10, 8, 8\], expected \[N, 1, 8, 8\]"):
        load_dataset(recipe, "validation", recipe.data.validation)


def test_missing_array_and_wrong_dtype(sample_copy) -> None:
    folder = sample_copy("digits_cnn")
    _rewrite(folder, "val.npz", image=None, pixels=np.zeros((4, 1, 8, 8), np.float32))
    recipe = load_recipe(folder / "recipe.toml")
    with pytest.raises(DataError, match=r"no array named 'image' \(found: labels, pixels\)"):
        load_dataset(recipe, "validation", recipe.data.validation)
    _rewrite(folder, "val.npz", image=np.array([["a"] * 64] * 4).reshape(4, 1, 8, 8), pixels=None)
    with pytest.raises(DataError, match="dtype <U1"):
        load_dataset(recipe, "validation", recipe.data.validation)


def test_label_out_of_range(sample_copy) -> None:
    folder = sample_copy("digits_cnn")
    with np.load(folder / "data" / "val.npz") as npz:
        labels = npz["labels"].copy()
    labels[0] = 10
    _rewrite(folder, "val.npz", labels=labels)
    recipe = load_recipe(folder / "recipe.toml")
    with pytest.raises(DataError, match=r"class indices in \[0, 10\], but the labels file has 10 classes"):
        load_dataset(recipe, "validation", recipe.data.validation)


def test_pickled_npz_refused(sample_copy) -> None:
    folder = sample_copy("digits_cnn")
    np.savez(folder / "data" / "val.npz", image=np.array([object()], dtype=object))
    recipe = load_recipe(folder / "recipe.toml")
    with pytest.raises(DataError, match="pickled objects"):
        load_dataset(recipe, "validation", recipe.data.validation)


def test_constant_input_is_flagged(sample_copy) -> None:
    folder = sample_copy("digits_cnn")
    _rewrite(folder, "val.npz", image=np.ones((8, 1, 8, 8), np.float32), labels=np.arange(8))
    recipe = load_recipe(folder / "recipe.toml")
    data = load_dataset(recipe, "validation", recipe.data.validation)
    flagged = [c for c in data.checks if not c.passed]
    assert [c.name for c in flagged] == ["validation.image.varies"]
