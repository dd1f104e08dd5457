"""Quantization-aware fine-tuning of a built int8 .tflite (mobex.quantize.tflite.qat), judged in LiteRT.

The twin must be the model (checked against LiteRT), writing back an untrained twin must change nothing,
training must move the LiteRT model towards the float model on the data it trained on, and the flow keeps
a fine-tuned model only when it measured better. Bad input (no training data) is refused before anything
is converted.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mobex.converters.tflite import convert_tflite
from mobex.data import example_inputs, load_dataset, load_validation_and_calibration
from mobex.errors import RecipeError
from mobex.quantize.tflite.graph import TfliteGraph
from mobex.quantize.tflite.qat import FinetuneSettings, UnsupportedGraph, _torch_twin, finetune_int8
from mobex.quantize.tflite.static_int8 import Int8Options, StaticInt8
from mobex.recipe import load_recipe
from mobex.runtime.litert import TfliteRunner
from mobex.sources import load_model
from mobex.targets.tflite import int8_options
from tests.conftest import SAMPLES

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """digits_cnn converted to fp32 TFLite, its calibration feeds, its training feeds and a full-int8 build."""
    tmp = tmp_path_factory.mktemp("qat")
    recipe = load_recipe(SAMPLES / "digits_cnn" / "recipe.toml")
    validation, calibration = load_validation_and_calibration(recipe)
    base = convert_tflite(load_model(recipe), example_inputs(recipe, validation), tmp / "fp32.tflite")
    calib = list(calibration.feeds())
    training = list(load_dataset(recipe, "training", recipe.data.training).feeds())
    options = replace(int8_options(recipe), fallback=False)
    with StaticInt8(base.path, calib, options) as maker:
        int8 = maker.build()
    return base, calib, training, int8


def _outputs(model: bytes, feeds: list[dict], tmp: Path) -> np.ndarray:
    path = tmp / "m.tflite"
    path.write_bytes(model)
    runner = TfliteRunner(path)
    return np.concatenate([runner.run(f)[0] for f in feeds])


def _snr(reference: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((got - reference) ** 2)))


def test_the_twin_is_the_int8_model_and_an_untrained_write_back_changes_nothing(digits, tmp_path: Path) -> None:
    _, calib, _, int8 = digits
    twin = _torch_twin(int8)
    feeds = calib[:32]
    real = _outputs(int8, feeds, tmp_path)
    with torch.no_grad():
        mine = twin(torch.from_numpy(np.concatenate([f["image"] for f in feeds])))[0].numpy()
    assert _snr(real, mine) > 40  # the int8 model itself, not a float approximation of it
    assert np.array_equal(real.argmax(1), mine.argmax(1))

    same = twin.write_back(int8)
    before, after = TfliteGraph(int8), TfliteGraph(same)
    for op in before.ops:
        if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            np.testing.assert_array_equal(before.constant(op.inputs[1]), after.constant(op.inputs[1]))
            bias_before, bias_after = before.constant(op.inputs[2]), after.constant(op.inputs[2])
            # int32 biases pass through float32 once: equal to 1e-6 of their size
            np.testing.assert_allclose(bias_after, bias_before, rtol=1e-6, atol=1)
    for t_before, t_after in zip(before.tensors, after.tensors, strict=True):  # scales and layout untouched
        assert t_before.shape == t_after.shape and t_before.type == t_after.type
        if t_before.scales is not None:
            np.testing.assert_array_equal(t_before.scales, t_after.scales)
    assert _snr(real, _outputs(same, feeds, tmp_path)) > 60


def test_training_moves_the_litert_model_towards_the_float_model(digits, tmp_path: Path) -> None:
    base, _, training, int8 = digits
    feeds = training[:512]
    teacher = [_outputs(base.path.read_bytes(), feeds, tmp_path)]
    settings = FinetuneSettings(epochs=2, max_samples=512, threads=1)

    def run(model: bytes, f: list[dict]) -> list[np.ndarray]:
        return [_outputs(model, f, tmp_path)]

    tuned, report = finetune_int8(int8, ["image"], feeds, teacher, settings, run)
    assert report.samples == 512 and report.epochs == 2 and report.fidelity_db > 40
    assert report.losses[-1] < report.losses[0]
    before = _snr(teacher[0], _outputs(int8, feeds, tmp_path))
    after = _snr(teacher[0], _outputs(tuned, feeds, tmp_path))  # measured in LiteRT, not in the twin
    assert after > before + 0.5, (before, after)
    old, new = TfliteGraph(int8), TfliteGraph(tuned)
    weighted = [op for op in old.ops if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    assert any(not np.array_equal(old.constant(op.inputs[2]), new.constant(op.inputs[2])) for op in weighted)
    moved = 0
    for op in weighted:  # weight scales stay; int32 bias scales follow the (trained) input scale, as TFLite requires
        weight_scales = new.tensors[op.inputs[1]].scales
        np.testing.assert_array_equal(old.tensors[op.inputs[1]].scales, weight_scales)
        input_scale = new.tensors[op.inputs[0]].scales[0]
        np.testing.assert_allclose(new.tensors[op.inputs[2]].scales, input_scale * weight_scales, rtol=1e-6)
        moved += input_scale != old.tensors[op.inputs[0]].scales[0]
    assert moved > 0  # activation step sizes trained too (LSQ)


def test_the_flow_fine_tunes_only_a_failing_model_and_keeps_only_a_better_one(digits) -> None:
    base, calib, training, _ = digits
    strict = Int8Options(
        fallback=False,
        task="classification",
        limits={"snr_db": 80.0},  # out of int8's reach: the flow fine-tunes, and the gate still fails
        finetune=FinetuneSettings(epochs=1, max_samples=256, threads=1),
    )
    with StaticInt8(base.path, calib, strict, training=training) as maker:
        made = maker.quantize()
    assert len(made.finetune) == 1 and made.finetune_skipped is None
    trial = made.finetune[0]
    assert trial.fallback == [] and trial.passed is False
    assert set(trial.held_out) == set(trial.after)  # judged on held-out training samples too (every 10th)
    kept = made.metrics == trial.after
    better = (trial.after["top1_agreement"], trial.after["snr_db"]) > (
        trial.before["top1_agreement"],
        trial.before["snr_db"],
    )
    assert kept == better
    assert made.details()["finetune"]["trials"][0]["samples"] == 256

    easy = replace(strict, limits={"top1_agreement": 0.5})  # passes without fine-tuning: nothing is trained
    with StaticInt8(base.path, calib, easy, training=training) as maker:
        assert maker.quantize().finetune == []

    with StaticInt8(base.path, calib, strict, training=None) as maker:
        assert maker.quantize().finetune_skipped.startswith("no training data given")


def test_a_graph_the_twin_cannot_run_is_named() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Sigmoid()).eval()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        base = convert_tflite(model, {"x": torch.rand(1, 1, 8, 8)}, Path(tmp) / "s.tflite")
        feeds = [{"x": np.random.default_rng(i).random((1, 1, 8, 8), dtype=np.float32)} for i in range(16)]
        with StaticInt8(base.path, feeds, Int8Options(fallback=False)) as maker:
            int8 = maker.build()
    with pytest.raises(UnsupportedGraph, match="LOGISTIC"):
        _torch_twin(int8)


def test_finetune_without_training_data_is_a_recipe_error(sample_copy) -> None:
    folder = sample_copy("digits_cnn")
    recipe = folder / "recipe.toml"
    text = recipe.read_text().replace('training = "data/train.npz"\n', "")
    recipe.write_text(text + "\n[quantization.finetune]\nepochs = 1\n")
    with pytest.raises(RecipeError, match=r"\[quantization.finetune\]: int8 fine-tuning needs training data"):
        load_recipe(recipe)


def test_smaller_fallback_sets_are_tried_most_sensitive_first(digits) -> None:
    """After a plain search that needed 6 float ops, fine-tuning tries the 2 and then the 4 most sensitive ones
    (`fallback_trials` = 2); one that passes replaces the search's answer, one that fails leaves it alone."""
    from mobex.quantize.tflite.search import SearchResult

    base, calib, training, _ = digits
    settings = FinetuneSettings(epochs=1, max_samples=64, threads=1)
    strict = Int8Options(fallback=False, task="classification", limits={"snr_db": 80.0}, finetune=settings)
    with StaticInt8(base.path, calib, strict, training=training) as maker:
        ops = [op for op in maker.graph.quantizable_ops() if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D")]
        ranked = [(op, 20.0 + i) for i, op in enumerate(reversed(ops))]  # the last conv "most sensitive"
        six = sorted((op for op, _ in ranked[:6]), key=lambda o: o.index)
        plain = maker.build(frozenset(op.scope for op in six))
        search = SearchResult(six, True, plain, maker.evaluate(plain), ranked)
        made = maker.quantize()  # a result to hang the trials on (fails, fine-tunes the full int8 once)
        made.model, made.fallback, made.finetune = plain, six, []
        maker._finetune_smaller_fallbacks(made, search)
        assert [t.fallback for t in made.finetune] == [
            [op.label for op in sorted((o for o, _ in ranked[:k]), key=lambda o: o.index)] for k in (2, 4)
        ]
        assert made.model == plain and made.fallback == six  # nothing passed: the search's answer stands

        maker.options = replace(strict, limits={"top1_agreement": 0.5})
        maker.limits = {"top1_agreement": (0.5, "min")}
        made.finetune = []
        maker._finetune_smaller_fallbacks(made, search)
    assert len(made.finetune) == 1 and made.finetune[0].passed
    assert [op.label for op in made.fallback] == made.finetune[0].fallback and len(made.fallback) == 2
    assert made.model != plain
