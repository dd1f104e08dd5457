"""Image folders: decoding, the contract's steps, labels from class folders, bad files, the cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mobex.data import load_dataset
from mobex.datasources.images import ImageFolder
from mobex.errors import DataError, RecipeError
from mobex.recipe import load_recipe
from tests.datasources.conftest import IMAGE_RECIPE, write_photos


def _recipe(project, tmp_path: Path, text: str = IMAGE_RECIPE, **data: str):
    write_photos(tmp_path / "photos")
    extra = "".join(f"{k} = {v}\n" for k, v in data.items())
    return load_recipe(
        project(text.replace('validation = "photos"\n', f'validation = "photos"\n{extra}'), ["china", "flower"])
    )


def test_class_folders_give_labels_and_the_input_shape(project, tmp_path: Path) -> None:
    recipe = _recipe(project, tmp_path)
    data = load_dataset(recipe, "validation", recipe.data.validation)
    assert data.arrays["image"].shape == (8, 3, 64, 64) and data.arrays["image"].dtype == np.float32
    assert data.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    checks = {c.name: c for c in data.checks}
    assert "china (4), flower (4)" in checks["validation.classes"].detail
    assert checks["validation.decoded"].detail.startswith("8 of 8 pictures decoded")
    # The ImageNet mean/std map 0..255 pixels to about [-2.1, 2.6]: the implied range check runs.
    assert checks["validation.image.preprocessing_range"].passed


def test_a_class_folder_missing_from_the_labels_file_is_refused(project, tmp_path: Path) -> None:
    recipe = _recipe(project, tmp_path)
    (tmp_path / "labels.txt").write_text("china\ncat\n")
    with pytest.raises(DataError, match=r"class folder\(s\) 'flower' are not in the labels file"):
        load_dataset(load_recipe(tmp_path / "recipe.toml"), "validation", recipe.data.validation)


def test_bad_pictures_are_named_with_the_reason(project, tmp_path: Path) -> None:
    from PIL import Image

    recipe = _recipe(project, tmp_path)
    china = tmp_path / "photos" / "china"
    good = (china / "china_2.jpg").read_bytes()
    (china / "truncated.jpg").write_bytes(good[: len(good) // 3])
    Image.fromarray(np.zeros((80, 80), np.uint8)).save(china / "gray.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(china / "tiny.png")  # scaled up to 72: usable
    with pytest.raises(DataError) as err:
        load_dataset(recipe, "validation", recipe.data.validation)
    text = str(err.value)
    assert "2 bad files" in text and "skip_bad_files = true" in text
    assert f"{china / 'truncated.jpg'}: cannot be decoded" in text
    assert f"{china / 'gray.png'}: has 1 channel(s) (mode L), the contract wants RGB" in text
    assert "tiny.png" not in text


def test_skip_bad_files_leaves_them_out_and_counts_them(project, tmp_path: Path) -> None:
    recipe = _recipe(project, tmp_path, skip_bad_files="true")
    (tmp_path / "photos" / "flower" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    data = load_dataset(recipe, "validation", recipe.data.validation)
    assert data.num_samples == 8  # the 8 good pictures, none invented
    bad = next(c for c in data.checks if c.name == "validation.bad_files")
    assert not bad.passed and bad.detail.startswith("1 bad files left out") and "broken.jpg" in bad.detail


def test_a_second_load_reads_the_cache_and_a_changed_file_decodes_again(project, tmp_path: Path, monkeypatch) -> None:
    recipe = _recipe(project, tmp_path)
    first = load_dataset(recipe, "validation", recipe.data.validation)
    decode = ImageFolder.decode

    def refuse(self, request, files):  # noqa: ANN001, ANN202
        raise AssertionError("decoded again although nothing changed")

    monkeypatch.setattr(ImageFolder, "decode", refuse)
    second = load_dataset(recipe, "validation", recipe.data.validation)
    np.testing.assert_array_equal(first.arrays["image"], second.arrays["image"])
    assert any(c.name == "validation.cache" and "no decoding" in c.detail for c in second.checks)

    calls = []
    monkeypatch.setattr(ImageFolder, "decode", lambda self, r, f: calls.append(1) or decode(self, r, f))
    picture = tmp_path / "photos" / "china" / "china_2.jpg"
    st = picture.stat()
    os.utime(picture, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    load_dataset(recipe, "validation", recipe.data.validation)
    assert calls == [1]


def test_max_samples_and_seed_pick_a_reproducible_subset(project, tmp_path: Path) -> None:
    recipe = _recipe(project, tmp_path, max_samples="3", seed="7")
    a = load_dataset(recipe, "validation", recipe.data.validation)
    b = load_dataset(recipe, "validation", recipe.data.validation)
    assert a.num_samples == 3
    np.testing.assert_array_equal(a.arrays["image"], b.arrays["image"])


def test_a_flat_folder_has_no_labels_and_nhwc_bgr_uint8_work(project, tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "one.png")
    text = (
        IMAGE_RECIPE.replace("shape = [1, 3, 64, 64]", 'shape = [1, 64, 64, 3]\ndtype = "uint8"')
        .replace('layout = "NCHW"', 'layout = "NHWC"')
        .replace('color = "RGB"', 'color = "BGR"')
        .replace('task = "classification"\nlabels = "labels.txt"\n', "")
    )
    recipe = load_recipe(project(text))
    data = load_dataset(recipe, "validation", recipe.data.validation)
    assert data.labels is None and data.arrays["image"].dtype == np.uint8
    # uint8 inputs take the pixels: resize 90x70 -> 92x72 (shorter side 72), centre crop 64, BGR order.
    resized = np.asarray(Image.fromarray(rgb).resize((92, 72), Image.Resampling.BILINEAR))
    top, left = round((72 - 64) / 2), round((92 - 64) / 2)
    np.testing.assert_array_equal(data.arrays["image"][0], resized[top : top + 64, left : left + 64, ::-1])


def test_pictures_need_a_scale_for_float_inputs_and_a_matching_shape(project, tmp_path: Path) -> None:
    recipe = _recipe(project, tmp_path, text=IMAGE_RECIPE.replace("scale = 255.0\n", ""))
    with pytest.raises(DataError, match=r"pictures need \[preprocessing\]\.scale"):
        load_dataset(recipe, "validation", recipe.data.validation)
    with pytest.raises(RecipeError, match=r"the image steps give samples of shape \[3, 60, 60\]"):
        load_recipe(project(IMAGE_RECIPE.replace("crop = 64", "crop = 60")))
