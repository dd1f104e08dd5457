"""`mobex init`: inputs found by running the model, task from the output, data and preprocessing from --data."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from mobex.errors import UsageError
from mobex.init_recipe import init_recipe
from mobex.recipe import load_recipe
from tests.conftest import ROOT
from tests.datasources.conftest import TINY_CNN, write_photos, write_tones

MODELS = (
    TINY_CNN
    + """

class Unknown(torch.nn.Module):
    def forward(self, x):
        return x * 2


def build_unknown():
    return Unknown()
"""
)


@pytest.fixture()
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "model.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_factory_without_data_gets_its_shape_and_random_data(folder: Path) -> None:
    starter = init_recipe("model:build_mlp", folder / "recipe.toml")
    assert [(f.name, f.shape, f.dtype) for f in starter.inputs] == [("features", [1, 13], "float32")]
    recipe = load_recipe(folder / "recipe.toml")
    assert recipe.inputs[0].shape == [1, 13] and recipe.model.task == "other"  # 3 scores but no labels, no picture
    with np.load(folder / "data" / "init-random.npz") as npz:
        assert npz["features"].shape == (32, 13)
    text = (folder / "recipe.toml").read_text()
    assert "TODO: random inputs, so a first build runs: use real data" in text
    assert tomllib.loads(text)["android"]["variants"] == ["fp32", "fp16", "dynamic-int8", "int8"]


def test_a_picture_folder_gives_labels_preprocessing_and_a_classifier(folder: Path) -> None:
    write_photos(folder / "photos", per_class=2)
    starter = init_recipe("model:build", folder / "recipe.toml", data=folder / "photos")
    assert starter.inputs[0].shape == [1, 3, 224, 224] and starter.task == "classification"
    recipe = load_recipe(folder / "recipe.toml")
    assert recipe.labels() == ["china", "flower"]
    contract = recipe.preprocessing
    assert (contract.kind, contract.resize, contract.crop, contract.scale) == ("image", 256, 224, 255.0)
    assert recipe.data.validation == Path("photos") and recipe.data.min_calibration_samples == 4


def test_audio_folder_and_given_inputs(folder: Path) -> None:
    write_tones(folder / "tones")
    init_recipe("model:build_audio", folder / "recipe.toml", data=folder / "tones", inputs=["audio:1x800"])
    recipe = load_recipe(folder / "recipe.toml")
    assert recipe.preprocessing.kind == "audio" and recipe.preprocessing.sample_rate == 8000
    assert recipe.preprocessing.window == 800 and recipe.labels() == ["high", "low"]


def test_what_it_cannot_tell_is_a_todo_and_files_are_not_overwritten(folder: Path) -> None:
    starter = init_recipe("model:build_unknown", folder / "recipe.toml")
    assert starter.inputs[0].shape is None
    assert (
        "# shape = [1, ...]            # TODO: not found: fill in its shape and dtype"
        in (folder / "recipe.toml").read_text()
    )
    with pytest.raises(UsageError, match="exists"):
        init_recipe("model:build_mlp", folder / "recipe.toml")
    init_recipe("model:build_mlp", folder / "recipe.toml", force=True)
    assert load_recipe(folder / "recipe.toml").inputs[0].shape == [1, 13]


@pytest.mark.slow
def test_mobex_build_runs_on_the_recipe_init_wrote_for_a_picture_folder(folder: Path) -> None:
    """The issue's promise: `mobex init --data photos/` then `mobex build`, no edits (the labels were right)."""
    import subprocess
    import sys

    write_photos(folder / "photos", per_class=4)
    env = {**__import__("os").environ, "MOBEX_CACHE_DIR": str(folder / "cache"), "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "mobex"]
    subprocess.run([*cli, "init", "model:build", "--data", "photos"], cwd=folder, env=env, check=True)
    done = subprocess.run([*cli, "build", "recipe.toml", "--json"], cwd=folder, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in (folder / "dist").glob("*.zip")) == ["model-0.1.0-android.zip", "model-0.1.0-ios.zip"]


def test_an_exported_program_names_and_sizes_its_inputs(folder: Path) -> None:
    import torch

    from mobex.sources import load_source

    program = torch.export.export(load_source(folder, "model:build_mlp"), (torch.zeros(1, 13),))
    torch.export.save(program, folder / "mlp.pt2")
    starter = init_recipe("mlp.pt2", folder / "recipe.toml")
    assert [(f.name, f.shape, f.how) for f in starter.inputs] == [("features", [1, 13], "from the ExportedProgram")]
    assert load_recipe(folder / "recipe.toml").model.source == "mlp.pt2"
