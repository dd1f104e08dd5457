"""Static int8 on the shipped samples, with the recipe's own settings: the two failures measured before
mobex's int8 work are fixed (wine MLP: agreement 0.556 and cosine -0.73; digits ViT: cosine 0.90).

Each test converts the sample, quantizes it exactly as `mobex build` does (`mobex.targets.tflite.int8_options`),
and checks the int8 gate on the validation split, which neither calibration nor the search saw.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mobex.converters.tflite import convert_tflite
from mobex.data import example_inputs, load_validation_and_calibration
from mobex.metrics.parity import parity_summary
from mobex.plugins import variant
from mobex.recipe import load_recipe
from mobex.runtime.litert import TfliteRunner
from mobex.runtime.torch_model import TorchRunner
from mobex.sources import load_model
from mobex.targets.tflite import int8_options, quantize_tflite
from tests.conftest import SAMPLES

torch.set_num_threads(1)


@dataclass
class Sample:
    recipe: Any
    validation: Any
    calibration: Any
    base: Any
    reference: np.ndarray  # the torch model's logits on the validation split


def convert(sample: str, tmp: Path) -> Sample:
    recipe = load_recipe(SAMPLES / sample / "recipe.toml")
    validation, calibration = load_validation_and_calibration(recipe)
    model = load_model(recipe)
    base = convert_tflite(model, example_inputs(recipe, validation), tmp / "fp32.tflite")
    reference = TorchRunner(model, [i.name for i in recipe.inputs])
    want = np.concatenate([reference.run(f)[0] for f in validation.feeds()])
    return Sample(recipe, validation, calibration, base, want)


def build_int8(s: Sample, tmp: Path, name: str = "int8", **overrides):
    options = replace(int8_options(s.recipe), **overrides)
    feeds = list(s.calibration.feeds())
    q = quantize_tflite(s.base, "int8", tmp / f"{name}.tflite", calibration=feeds, int8=options)
    runner = TfliteRunner(q.path)
    got = np.concatenate([runner.run(f)[0] for f in s.validation.feeds()])
    labels = s.validation.batch_labels()
    parity = parity_summary(["logits"], [s.reference], [got], task="classification", labels=labels, num_classes=None)
    return q, parity


def assert_int8_gate(recipe, parity: dict) -> None:
    """The default int8 gates as the build applies them (metrics that cannot judge this model left out)."""
    from mobex.metrics.parity import not_meaningful
    from mobex.validate.gates import evaluate

    spec = variant("tflite", "int8")
    results = evaluate(spec, recipe.model.task, parity, recipe.gates, not_applicable=not_meaningful(parity))
    assert {r.metric for r in results} >= {"top1_agreement"}, results
    failed = [r.message for r in results if not r.passed]
    assert not failed, failed


def test_wine_mlp_keeps_its_raw_feature_standardisation_in_float(tmp_path: Path) -> None:
    """Raw features span 0.1 (hue) to 1680 (proline): one int8 scale for all 13 flattens the small ones.

    The search measures that the SUB/MUL standardising the input are what breaks, keeps exactly those two
    in float, and quantizes the MLP itself.
    """
    sample = convert("tabular_mlp", tmp_path)
    _, broken = build_int8(sample, tmp_path, "plain", fallback=False)
    assert broken["top1_agreement"] < 0.8, broken  # the measured failure (3 logits: no cosine is computed)

    q, parity = build_int8(sample, tmp_path)
    details = q.details
    assert [layer["op"] for layer in details["fallback_layers"]] == ["SUB", "MUL"]
    assert [s["op"] for s in details["sensitivity"][:2]] == ["SUB", "MUL"]  # measured as the most damaging
    assert parity["top1_agreement"] >= 0.99
    assert_int8_gate(sample.recipe, parity)
    assert q.size_bytes < 0.9 * sample.base.size_bytes  # the weights are int8


def test_digits_vit_passes_the_cosine_gate(tmp_path: Path) -> None:
    """Bias correction removes the mean shift int8 weight rounding adds; without it the worst sample's
    logits drift (cosine 0.90 < 0.95) though top-1 agreement is 100 %."""
    sample = convert("digits_vit", tmp_path)
    _, before = build_int8(sample, tmp_path, "plain", bias_correction=False, fallback=False)
    assert before["cosine_min"] < 0.95  # the measured failure
    q, parity = build_int8(sample, tmp_path)
    assert parity["top1_agreement"] >= 0.99
    assert_int8_gate(sample.recipe, parity)
    assert any("bias correction on" in note for note in q.notes)


def test_digits_cnn_int8_keeps_99_percent_agreement(tmp_path: Path) -> None:
    sample = convert("digits_cnn", tmp_path)
    q, parity = build_int8(sample, tmp_path)
    assert parity["top1_agreement"] >= 0.99
    assert_int8_gate(sample.recipe, parity)
    assert q.details["fallback_layers"] == []


def efficientnet(tmp: Path) -> Sample:
    if not (SAMPLES / "efficientnet_lite0" / "weights.safetensors").exists():
        pytest.skip("run sample_models/efficientnet_lite0/prepare.py to fetch the weights and make the data")
    return convert("efficientnet_lite0", tmp)


@pytest.mark.slow
def test_efficientnet_lite0_int8(tmp_path: Path) -> None:
    """The real pretrained CNN (run sample_models/efficientnet_lite0/prepare.py first); about 1.5 minutes.

    Without the fallback search (measured in bench_compression.py), on 64 calibration samples:
    GPTQ weights, bias correction, equalization and percentile ranges against the plain recipe."""
    sample = efficientnet(tmp_path)
    fast = {"fallback": False, "calibration_samples": 64}
    _, plain = build_int8(
        sample, tmp_path, "plain", bias_correction=False, equalize=False, weight_rounding="nearest",
        range_estimation="minmax", **fast,
    )  # fmt: skip
    q, parity = build_int8(sample, tmp_path, **fast)
    assert parity["top1_agreement"] >= plain["top1_agreement"] + 0.04, (plain, parity)
    assert parity["snr_db"] >= plain["snr_db"] + 5.0, (plain, parity)
    assert q.size_bytes <= 0.3 * sample.base.size_bytes


@pytest.mark.slow
def test_efficientnet_lite0_int8_weights_keep_97_percent(tmp_path: Path) -> None:
    """int8 weights with float compute: round-to-nearest keeps 85 % top-1 agreement, calibrated rounding >= 97 %."""
    sample = efficientnet(tmp_path)
    feeds = list(sample.calibration.feeds())
    q = quantize_tflite(sample.base, "int8-weights", tmp_path / "w8.tflite", calibration=feeds)
    runner = TfliteRunner(q.path)
    got = np.concatenate([runner.run(f)[0] for f in sample.validation.feeds()])
    parity = parity_summary(["logits"], [sample.reference], [got], task="classification", labels=None, num_classes=None)
    assert parity["top1_agreement"] >= 0.97, parity
    assert parity["snr_db"] >= 28.0, parity
