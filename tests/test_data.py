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


from tests.task_projects import recipe_text  # noqa: E402 - with the tests that use it


def _project(tmp_path: Path, recipe: str, **arrays: np.ndarray) -> Path:
    """A recipe with a trivial model source (data checks do not load it) and its validation arrays."""
    (tmp_path / "model.py").write_text("def build():\n    raise AssertionError('data checks never load the model')\n")
    (tmp_path / "recipe.toml").write_text(recipe)
    np.savez(tmp_path / "val.npz", **arrays)
    return tmp_path / "recipe.toml"


TOKENS_RECIPE = recipe_text("tokens", [("ids", [1, 6], "int64"), ("mask", [1, 6], "bool")], weights=False)


def test_int64_ids_that_a_target_stores_as_int32_must_fit(tmp_path: Path) -> None:
    from mobex.data import load_validation_and_calibration
    from mobex.errors import DataError
    from mobex.recipe import load_recipe

    ids = np.arange(24, dtype=np.int64).reshape(4, 6)
    path = _project(tmp_path, TOKENS_RECIPE, ids=ids, mask=ids % 2 == 0)
    validation, _ = load_validation_and_calibration(load_recipe(path))
    check = next(c for c in validation.checks if c.name == "validation.ids.int32_range")
    assert check.passed and "[0, 23]" in check.detail and "TFLite" in check.detail
    ids[2, 3] = 2**31  # one id past int32
    _project(tmp_path, TOKENS_RECIPE, ids=ids, mask=ids % 2 == 0)
    with pytest.raises(DataError, match=r"'ids' holds int64 values in \[0, 2147483648\], outside int32") as err:
        load_validation_and_calibration(load_recipe(path))
    assert "TFLite" in str(err.value) and "wrap" in str(err.value)


def test_a_bool_input_takes_only_zeros_and_ones(tmp_path: Path) -> None:
    from mobex.data import load_validation_and_calibration
    from mobex.errors import DataError
    from mobex.recipe import load_recipe

    ids = np.arange(24, dtype=np.int64).reshape(4, 6) % 7  # varying: all-constant validation data is refused
    path = _project(tmp_path, TOKENS_RECIPE, ids=ids, mask=np.ones((4, 6), np.int64))
    validation, _ = load_validation_and_calibration(load_recipe(path))
    assert validation.arrays["mask"].dtype == np.bool_
    _project(tmp_path, TOKENS_RECIPE, ids=ids, mask=np.full((4, 6), 2))
    with pytest.raises(DataError, match="bool input but holds values other than 0 and 1"):
        load_validation_and_calibration(load_recipe(path))


STREAMING_RECIPE = recipe_text(
    "stream",
    [("x", [2, 3], "float32"), ("h", [2, 4], "float32")],
    outputs=("y", "h_out"),
    tables='[[state]]\ninput = "h"\noutput = "h_out"',
    weights=False,
)


def test_streaming_data_is_sequences_with_optional_initial_states(tmp_path: Path) -> None:
    from mobex.data import load_dataset
    from mobex.recipe import load_recipe

    x = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)  # 4 sequences of 5 steps
    path = _project(tmp_path, STREAMING_RECIPE, x=x, labels=np.zeros((4, 5), np.int64))
    recipe = load_recipe(path)
    data = load_dataset(recipe, "validation", recipe.data.validation)
    seq = data.sequences
    assert seq is not None and (seq.num_sequences, seq.num_steps, seq.batch) == (4, 5, 2)
    assert np.all(seq.initial["h"] == 0) and seq.initial["h"].shape == (4, 4)
    assert data.arrays["x"].shape == (20, 3) and data.num_batches == 10
    np.testing.assert_array_equal(data.feed(1)["x"], x[0:2, 1])  # batch 1: sequences 0-1 at step 1
    np.testing.assert_array_equal(data.feed(5)["x"], x[2:4, 0])  # batch 5: the second group's first step
    assert data.labels.shape == (20,)
    assert any(c.name == "validation.h.initial_state" for c in data.checks)
    h0 = np.ones((4, 4), np.float32)
    _project(tmp_path, STREAMING_RECIPE, x=x, h=h0)
    given = load_dataset(recipe, "validation", recipe.data.validation)
    assert np.all(given.sequences.initial["h"] == 1) and np.all(given.feed(0)["h"] == 1)
    fed = given.with_fed_states({"h": np.full((4, 5, 4), 7.0, np.float32)})
    assert np.all(fed.feed(3)["h"] == 7.0) and fed.sequences is given.sequences


def test_streaming_data_shapes_are_refused_clearly(tmp_path: Path) -> None:
    from mobex.data import load_dataset
    from mobex.errors import DataError
    from mobex.recipe import load_recipe

    path = _project(tmp_path, STREAMING_RECIPE, x=np.zeros((4, 3), np.float32))  # no step axis
    recipe = load_recipe(path)
    with pytest.raises(DataError, match=r"expected \[N, T, 3\].*\n.*num_sequences, steps"):
        load_dataset(recipe, "validation", recipe.data.validation)
    _project(tmp_path, STREAMING_RECIPE, x=np.zeros((3, 5, 3), np.float32))
    with pytest.raises(DataError, match="3 sequences is not a multiple of the batch size 2"):
        load_dataset(recipe, "validation", recipe.data.validation)
    _project(tmp_path, STREAMING_RECIPE, x=np.zeros((4, 5, 3), np.float32), labels=np.zeros(4, np.int64))
    with pytest.raises(DataError, match="one per step"):
        load_dataset(recipe, "validation", recipe.data.validation)
