"""TorchScript and ExportedProgram sources go through the whole build, not just through loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mobex.errors import GateFailed, RecipeError
from mobex.pipeline import BuildOptions, build
from mobex.recipe import load_recipe
from mobex.sources import fingerprint_mismatch, load_model, weights_fingerprint


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


def test_a_factory_that_builds_other_weights_in_each_process_fails_its_exports(sample_copy, tmp_path: Path) -> None:
    """Seeding cannot reach a factory that draws from os.urandom: the export workers' models are checked
    against the reference run's by weights fingerprint, and each export fails naming the tensor."""
    folder = sample_copy("tabular_mlp")
    (folder / "urandom_model.py").write_text(
        "import os\nimport torch\nfrom model import WineMLP\n\n\ndef build():\n"
        "    torch.manual_seed(int.from_bytes(os.urandom(4), 'little'))\n    return WineMLP()\n"
    )
    recipe_path = folder / "recipe.toml"
    text = recipe_path.read_text().replace('source = "model:build"', 'source = "urandom_model:build"')
    text = text.replace('weights = "weights.safetensors"\n', "")
    text = text[: text.index("[android]")] + '[android]\nvariants = ["fp32"]\n[ios]\nvariants = ["fp32"]\n'
    recipe_path.write_text(text)
    with pytest.raises(GateFailed):
        build(load_recipe(recipe_path), BuildOptions(out_dir=tmp_path / "out", jobs=1))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    for variant in report["variants"]:
        assert "is not the one the reference run used" in variant["status"], variant["status"]
        assert "first 'net.0.weight'" in variant["status"], variant["status"]


def test_weights_fingerprint_tells_float_rounding_from_other_weights() -> None:
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    assert fingerprint_mismatch(weights_fingerprint(a), b) == "2 of 2 tensors have different values, first 'weight'"
    b.load_state_dict(a.state_dict())
    assert fingerprint_mismatch(weights_fingerprint(a), b) is None
    with torch.no_grad():
        b.weight.mul_(1 + 1e-7)  # last bits, as another thread count gives a computed BatchNorm statistic
    assert fingerprint_mismatch(weights_fingerprint(a), b) is None
    with torch.no_grad():
        b.weight[0, 0], b.weight[0, 1] = a.weight[0, 1].item(), a.weight[0, 0].item()  # two values swapped
    assert fingerprint_mismatch(weights_fingerprint(a), b) == "1 of 2 tensors have different values, first 'weight'"
    assert "missing ['bias']" in fingerprint_mismatch(weights_fingerprint(a), torch.nn.Linear(3, 2, bias=False))
    counts = torch.nn.BatchNorm1d(3)
    other = torch.nn.BatchNorm1d(3)
    other.num_batches_tracked += 1  # int buffers: exact
    assert "first 'num_batches_tracked'" in fingerprint_mismatch(weights_fingerprint(counts), other)
