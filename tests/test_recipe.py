"""Recipe errors name the file and the field; good recipes load with defaults filled in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mobex.errors import RecipeError
from mobex.recipe import load_recipe


def _edit(folder: Path, old: str, new: str) -> Path:
    path = folder / "recipe.toml"
    text = path.read_text()
    assert old in text, f"test setup: {old!r} not in recipe"
    path.write_text(text.replace(old, new, 1))
    return path


def test_sample_recipe_loads(sample_copy) -> None:
    folder = sample_copy("digits_cnn")
    recipe = load_recipe(folder / "recipe.toml")
    assert recipe.model.name == "digits-cnn"
    assert recipe.inputs[0].shape == [1, 1, 8, 8]
    assert recipe.base_dir == folder.resolve()
    assert recipe.labels() == [str(i) for i in range(10)]
    assert re.fullmatch(r"[0-9a-f]{64}", recipe.sha256)
    assert recipe.latency.threads == [1, 4]


@pytest.mark.parametrize(
    ("old", "new", "field", "says"),
    [
        ('version = "1.0.0"', 'version = "1.0"', "[model].version", "SemVer"),
        ('name = "digits-cnn"', 'name = "Digits CNN"', "[model].name", "bundle name"),
        (
            'variants = ["fp32", "fp16", "dynamic-int8", "int8"]',
            'variants = ["fp32", "int7"]',
            "[android].variants",
            "unknown TFLite variant 'int7'",
        ),
        (
            'variants = ["fp32", "fp16", "int8-weights"]',
            'variants = ["fp16", "palettize-3bit"]',
            "[ios].variants",
            "unknown Core ML variant",
        ),
        (
            'variants = ["fp32", "fp16", "int8-weights"]',
            'variants = ["int4-weights"]',
            "[ios]",
            "needs minimum_deployment_target = 'iOS18'",
        ),
        (
            'variants = ["fp32", "fp16", "int8-weights"]',
            'variants = ["palettize-4bit-grouped"]',
            "[ios]",
            "'palettize-4bit-grouped' needs minimum_deployment_target = 'iOS18'",
        ),
        ("shape = [1, 1, 8, 8]", 'shape = [1, 1, "8", 8]', "[inputs][0].shape[2]", "integer"),
        ("shape = [1, 1, 8, 8]", "shape = [1, 0, 8, 8]", "[inputs][0].shape", "positive"),
        ('dtype = "float32"', 'dtype = "float128"', "[inputs][0].dtype", "float32"),
        ('task = "classification"', 'task = "ranking"', "[model].task", "classification"),
        ("[model]", '[model]\ncolour = "red"', "[model].colour", "unknown key"),
        (
            'minimum_deployment_target = "iOS16"',
            'minimum_deployment_target = "iOS12"',
            "[ios].minimum_deployment_target",
            "iOS15",
        ),
        ('source = "model:build"', 'source = "model"', "[model].source", "module:function"),
    ],
)
def test_recipe_mistakes_name_file_and_field(sample_copy, old: str, new: str, field: str, says: str) -> None:
    path = _edit(sample_copy("digits_cnn"), old, new)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert str(path.resolve()) in message
    assert field in message
    assert says in message
    assert err.value.exit_code == 2


def test_missing_file_is_named(sample_copy) -> None:
    path = _edit(sample_copy("digits_cnn"), 'validation = "data/val.npz"', 'validation = "data/nope.npz"')
    with pytest.raises(RecipeError, match=r"\[data\]\.validation: file not found: .*nope\.npz"):
        load_recipe(path)


def test_missing_required_key(sample_copy) -> None:
    path = _edit(sample_copy("digits_cnn"), 'version = "1.0.0"\n', "")
    with pytest.raises(RecipeError, match=r"\[model\]\.version: required key is missing"):
        load_recipe(path)


def test_bad_toml_and_missing_recipe(tmp_path: Path) -> None:
    bad = tmp_path / "recipe.toml"
    bad.write_text("[model\nname=")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.toml")


def test_ship_must_name_a_listed_variant_or_policy(sample_copy) -> None:
    path = _edit(
        sample_copy("digits_cnn"),
        'minimum_deployment_target = "iOS16"',
        'minimum_deployment_target = "iOS16"\nship = "fp32x"',
    )
    with pytest.raises(RecipeError, match=r"\[ios\].*ship = 'fp32x' is neither a policy"):
        load_recipe(path)


def test_unknown_gate_metric(sample_copy) -> None:
    folder = sample_copy("digits_cnn")
    (folder / "recipe.toml").write_text((folder / "recipe.toml").read_text() + "\n[gates.all]\ntop9_agreement = 0.5\n")
    with pytest.raises(RecipeError, match=r"\[gates\]\.all: unknown gate metric 'top9_agreement'"):
        load_recipe(folder / "recipe.toml")


def _task_recipe(tmp_path: Path, model: str, extra: str = "") -> Path:
    from tests.task_projects import recipe_text

    (tmp_path / "model.py").write_text("def build():\n    pass\n")
    (tmp_path / "val.npz").write_bytes(b"")
    path = tmp_path / "recipe.toml"
    inputs = [("x", [1, 4], "float32"), ("h", [1, 3], "float32")]
    outputs = ("scores", "boxes", "h_out")
    path.write_text(recipe_text("heads", inputs, model=model, outputs=outputs, tables=extra, weights=False))
    return path


@pytest.mark.parametrize(
    ("model", "extra", "says"),
    [
        ('task = "classification"', "", "needs [model].class_output"),
        ('task = "classification"\nclass_output = "logits"', "", "'logits' is not an output name"),
        ('task = "regression"\nclass_output = "scores"', "", "class_output is for task = 'classification'"),
        ('task = "detection"', "", "needs a [detection] table"),
        ('task = "detection"', '[detection]\nscores = "scores"\nboxes = "box"', "[detection].boxes = 'box'"),
        ('task = "detection"', '[detection]\nscores = "scores"\nboxes = "scores"', "name the same output"),
        ('task = "other"', '[segmentation]\noutput = "scores"', "[segmentation] is for task = 'segmentation'"),
        ('task = "other"', '[[state]]\ninput = "c"\noutput = "h_out"', "input 'c' is not one of [[inputs]]"),
        ('task = "other"', '[[state]]\ninput = "h"\noutput = "c_out"', "'c_out' is not an output name"),
    ],
)
def test_task_tables_name_real_outputs(tmp_path: Path, model: str, extra: str, says: str) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(_task_recipe(tmp_path, model, extra))
    assert says in str(err.value)


def test_task_tables_load_and_output_names_must_match_the_model(tmp_path: Path) -> None:
    extra = (
        '[detection]\nscores = "scores"\nboxes = "boxes"\nbox_format = "cxcywh"\n'
        '[[state]]\ninput = "h"\noutput = "h_out"'
    )
    recipe = load_recipe(_task_recipe(tmp_path, 'task = "detection"', extra))
    assert recipe.detection.box_format == "cxcywh" and recipe.detection.score_threshold == 0.5
    assert [(s.input, s.output) for s in recipe.state] == [("h", "h_out")]
    assert recipe.output_names(3) == ["scores", "boxes", "h_out"]
    with pytest.raises(RecipeError, match="names 3 outputs, but the model returns 2"):
        recipe.output_names(2)
    multi = load_recipe(_task_recipe(tmp_path, 'task = "classification"\nclass_output = "scores"'))
    assert multi.model.class_output == "scores"
