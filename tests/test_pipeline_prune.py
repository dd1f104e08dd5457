"""`mobex build` with a [prune] table: pruned once in the parent, exported by both workers, reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mobex.pipeline import BuildOptions, build
from mobex.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]

PRUNE = """
[prune]
method = "structured"
sparsity = 0.5
scope = "per-layer"
max_accuracy_drop = 0.1  # two epochs of fine-tuning (a fast test) recover most, not all, of the accuracy

[prune.finetune]
epochs = 2
learning_rate = 0.003
"""


def _recipe(folder: Path, prune: str) -> Path:
    recipe = folder / "recipe.toml"
    text = recipe.read_text()
    text = text[: text.index("[android]")]
    text += '[android]\nvariants = ["fp32"]\n\n[ios]\nvariants = ["fp32"]\nminimum_deployment_target = "iOS16"\n'
    recipe.write_text(text + prune)
    return recipe


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    import shutil

    folder = tmp_path_factory.mktemp("src") / "digits_cnn"
    shutil.copytree(ROOT / "sample_models" / "digits_cnn", folder)
    out = tmp_path_factory.mktemp("dist")
    recipe = load_recipe(_recipe(folder, PRUNE))
    return build(recipe, BuildOptions(out_dir=out, jobs=2, source_date_epoch=1_700_000_000)), out


def test_pruned_model_is_what_both_platforms_ship(built) -> None:
    result, out = built
    assert result.passed
    report = json.loads((out / "report.json").read_text())
    pruning = report["pruning"]
    assert pruning["method"] == "structured"
    assert pruning["macs_after"] <= 0.55 * pruning["macs_before"]
    assert pruning["params_after"] < 0.5 * pruning["params_before"]
    assert pruning["quality"]["metric"] == "accuracy"
    assert pruning["quality"]["after_finetune"] > pruning["quality"]["after_pruning"]
    assert pruning["gate"]["passed"] and pruning["gate"]["limit"] == 0.1
    assert len(pruning["finetune"]["history"]) == 2
    assert report["reference"]["model"] == "pruned"
    assert report["data"]["training"]["samples"] == 1437
    assert "prune" in report["timings"]
    by_id = {v["id"]: v for v in report["variants"]}
    for vid in ("android/fp32", "ios/fp32"):
        parity = by_id[vid]["parity"]
        # tight parity with the pruned float model: the workers exported the pruned model, not the original
        assert parity["max_abs_error"] < 1e-4, vid
        expected = pruning["quality"]["original"] - parity["accuracy"]
        assert parity["accuracy_drop_vs_original"] == pytest.approx(expected)
    # the converted graph really is narrower: the TFLite file is well under the unpruned model's float32 weights
    assert by_id["android/fp32"]["size_bytes"] < pruning["params_before"] * 4 * 0.6


def test_unknown_layer_exits_2_before_anything_is_written(sample_copy, tmp_path: Path) -> None:
    folder = sample_copy("digits_cnn")
    recipe = _recipe(folder, '[prune]\nmethod = "structured"\nsparsity = 0.5\nignore = ["neck"]\n')
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "mobex", "build", str(recipe), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert "[prune].ignore: the model has no layer named 'neck'" in done.stderr
    assert "classifier" in done.stderr  # the valid names are listed
    assert "Traceback" not in done.stderr
    assert not out.exists()
