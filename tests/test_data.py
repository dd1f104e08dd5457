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
    """Constant validation data is refused (README); constant calibration data is only flagged."""
    folder = sample_copy("digits_cnn")
    _rewrite(folder, "val.npz", image=np.ones((8, 1, 8, 8), np.float32), labels=np.arange(8))
    recipe = load_recipe(folder / "recipe.toml")
    with pytest.raises(DataError, match="every input is constant"):
        load_dataset(recipe, "validation", recipe.data.validation)
    data = load_dataset(recipe, "calibration", recipe.data.validation)
    flagged = [c for c in data.checks if not c.passed]
    assert [c.name for c in flagged] == ["calibration.image.varies"]


def _with_range(folder: Path, line: str) -> None:
    """Replace the sample recipe's `range = ...` line under [preprocessing]."""
    recipe = folder / "recipe.toml"
    lines = [line if row.startswith("range = ") else row for row in recipe.read_text().splitlines()]
    recipe.write_text("\n".join(lines) + "\n")


def test_values_far_outside_the_preprocessing_range_are_refused(sample_copy) -> None:
    folder = sample_copy("digits_cnn")
    with np.load(folder / "data" / "val.npz") as npz:
        image = npz["image"] * 16  # 0..16 pixel intensities, as if the division by 16 had been forgotten
    _rewrite(folder, "val.npz", image=image)
    recipe = load_recipe(folder / "recipe.toml")
    with pytest.raises(DataError, match=r"far outside \[preprocessing\]\.range \[0, 1\]: \d+ values .* sample \d+"):
        load_dataset(recipe, "validation", recipe.data.validation)


def test_values_slightly_outside_the_range_are_a_warning(sample_copy) -> None:
    folder = sample_copy("digits_cnn")
    with np.load(folder / "data" / "val.npz") as npz:
        image = npz["image"].copy()
    image[0, 0, 0, 0] = 1.05
    _rewrite(folder, "val.npz", image=image)
    recipe = load_recipe(folder / "recipe.toml")
    data = load_dataset(recipe, "validation", recipe.data.validation)
    check = next(c for c in data.checks if c.name == "validation.image.preprocessing_range")
    assert not check.passed and "1 values slightly outside [0, 1]" in check.detail


def test_range_per_input_and_bad_range_spec(sample_copy) -> None:
    from mobex.errors import RecipeError

    folder = sample_copy("digits_cnn")
    _with_range(folder, "range = { image = [0.0, 0.5] }")
    recipe = load_recipe(folder / "recipe.toml")
    with pytest.raises(DataError, match=r"far outside \[preprocessing\]\.range \[0, 0\.5\]"):
        load_dataset(recipe, "validation", recipe.data.validation)
    _with_range(folder, "range = [1.0, 0.0]")
    # The typed contract (mobex.preprocessing) refuses a bad range when the recipe is read.
    with pytest.raises(RecipeError, match=r"\[preprocessing\]: range: expected \[lo, hi\] with lo < hi"):
        load_recipe(folder / "recipe.toml")


def test_dtype_check_says_what_was_cast(sample_copy) -> None:
    folder = sample_copy("digits_cnn")
    with np.load(folder / "data" / "val.npz") as npz:
        image = npz["image"].astype(np.float64)
    _rewrite(folder, "val.npz", image=image)
    recipe = load_recipe(folder / "recipe.toml")
    data = load_dataset(recipe, "validation", recipe.data.validation)
    check = next(c for c in data.checks if c.name == "validation.image.dtype")
    assert check.passed and check.detail == "float64, cast to float32"
