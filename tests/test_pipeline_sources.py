"""TorchScript and ExportedProgram sources go through the whole build, not just through loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mobex.errors import RecipeError
from mobex.pipeline import BuildOptions, build
from mobex.recipe import load_recipe
from mobex.sources import load_model


@pytest.mark.parametrize("kind", ["pt2", "pt"])
def test_saved_model_sources_build_both_platforms(sample_copy, tmp_path: Path, kind: str) -> None:
    folder = sample_copy("tabular_mlp")
    recipe_path = folder / "recipe.toml"
    model = load_model(load_recipe(recipe_path))
    example = (torch.zeros(1, 13),)
    if kind == "pt2":
        torch.export.save(torch.export.export(model, example), str(folder / "model.pt2"))
    else:
        torch.jit.trace(model, example).save(str(folder / "model.pt"))
    text = recipe_path.read_text().replace('source = "model:build"', f'source = "model.{kind}"')
    text = text.replace('weights = "weights.safetensors"\n', "")
    android = '[android]\nvariants = ["fp32"]\n' if kind == "pt2" else ""  # TorchScript: Core ML only
    text = text[: text.index("[android]")] + android + '[ios]\nvariants = ["fp32"]\n'
    recipe_path.write_text(text)
    result = build(load_recipe(recipe_path), BuildOptions(out_dir=tmp_path / "out", jobs=1))
    assert result.passed
    for variant in result.report["variants"]:
        assert variant["parity"]["max_abs_error"] < 1e-4, variant["id"]
        assert variant["parity"]["top1_agreement"] == 1.0
    assert {v["platform"] for v in result.report["variants"]} == ({"android", "ios"} if kind == "pt2" else {"ios"})


def test_torchscript_with_android_is_refused_before_work(sample_copy) -> None:
    folder = sample_copy("tabular_mlp")
    recipe_path = folder / "recipe.toml"
    torch.jit.trace(load_model(load_recipe(recipe_path)), (torch.zeros(1, 13),)).save(str(folder / "model.pt"))
    recipe_path.write_text(recipe_path.read_text().replace('source = "model:build"', 'source = "model.pt"'))
    with pytest.raises(RecipeError, match=r"TorchScript \(\.pt\), which the TFLite target cannot convert"):
        load_recipe(recipe_path)
