"""The shipped sample models: weights really reach their accuracy, data matches the recipe, graphs export."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
# Minimum validation accuracy of the shipped weights (scripts/train_sample_models.py measures more).
TARGETS = {"digits_cnn": 0.96, "digits_vit": 0.93, "tabular_mlp": 0.94}
DTYPES = {"float32": np.float32}


def _recipe(folder: Path) -> dict:
    return tomllib.loads((folder / "recipe.toml").read_text())


def _import_factory(folder: Path, source: str):
    """Import "module:function" from the recipe folder without touching sys.path or sys.modules."""
    module_name, func = source.split(":")
    spec = importlib.util.spec_from_file_location(f"_test_sample_{folder.name}", folder / f"{module_name}.py")
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, func)


def _trained_model(folder: Path) -> torch.nn.Module:
    recipe = _recipe(folder)
    model = _import_factory(folder, recipe["model"]["source"])()
    model.load_state_dict(load_file(folder / recipe["model"]["weights"]), strict=True)
    return model.eval()


@pytest.fixture(params=sorted(TARGETS))
def folder(request: pytest.FixtureRequest) -> Path:
    return SAMPLES / request.param


def test_shipped_weights_reach_target_accuracy(folder: Path) -> None:
    recipe = _recipe(folder)
    model = _trained_model(folder)
    val = np.load(folder / recipe["data"]["validation"])
    (inp,) = recipe["inputs"]
    with torch.no_grad():
        pred = model(torch.from_numpy(val[inp["name"]])).argmax(dim=1).numpy()
    accuracy = float((pred == val["labels"]).mean())
    assert accuracy >= TARGETS[folder.name], f"{folder.name}: val accuracy {accuracy:.4f}"


def test_data_splits_match_recipe(folder: Path) -> None:
    recipe = _recipe(folder)
    labels = (folder / recipe["model"]["labels"]).read_text().splitlines()
    sizes = {}
    for key in ("validation", "calibration", "training"):
        data = np.load(folder / recipe["data"][key])
        assert set(data.files) == {i["name"] for i in recipe["inputs"]} | {"labels"}, key
        n = len(data["labels"])
        for inp in recipe["inputs"]:
            arr = data[inp["name"]]
            assert inp["shape"][0] == 1
            assert arr.shape == (n, *inp["shape"][1:]), (key, arr.shape)
            assert arr.dtype == DTYPES[inp["dtype"]], (key, arr.dtype)
            assert np.isfinite(arr).all()
        assert data["labels"].dtype == np.int64 and data["labels"].shape == (n,)
        assert set(np.unique(data["labels"])) == set(range(len(labels))), f"{key}: every class present"
        sizes[key] = n
    assert sizes["calibration"] <= sizes["training"]


def test_model_exports_with_recipe_input_shape(folder: Path) -> None:
    recipe = _recipe(folder)
    model = _trained_model(folder)
    args = tuple(torch.zeros(i["shape"], dtype=getattr(torch, i["dtype"])) for i in recipe["inputs"])
    program = torch.export.export(model, args, strict=False)
    out = program.module()(*args)
    n_labels = len((folder / recipe["model"]["labels"]).read_text().splitlines())
    assert tuple(out.shape) == (1, n_labels)
    torch.testing.assert_close(out, model(*args))
