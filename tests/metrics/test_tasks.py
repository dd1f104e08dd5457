"""Task-aware evaluation: which outputs each task judges, small outputs, and what cannot be measured."""

from __future__ import annotations

import numpy as np
import pytest

from mobex.metrics import tasks
from mobex.metrics.detection import DecodeOptions
from mobex.metrics.parity import classification_metrics, output_parity, tensor_parity


def test_a_one_value_output_gets_range_errors_not_a_cosine() -> None:
    rng = np.random.default_rng(0)
    prob = rng.uniform(0.1, 0.9, (50, 1))
    good, bad = prob + 0.01, np.full_like(prob, 0.5)
    p_good, p_bad = output_parity("p", prob, good), output_parity("p", prob, bad)
    assert p_good.cosine_min is None and p_bad.cosine_min is None  # the cosine of one value is its sign
    span = prob.max() - prob.min()
    assert p_good.range_error_max == pytest.approx(0.01 / span)
    assert p_bad.range_error_mean > 10 * p_good.range_error_mean  # a constant answer is told apart
    assert p_good.values_per_sample == 1 and p_good.value_range == (prob.min(), prob.max())


def test_headline_cosine_and_range_errors_skip_what_they_cannot_judge() -> None:
    rng = np.random.default_rng(1)
    logits, box = rng.normal(size=(20, 10)), rng.uniform(0, 100, (20, 4))
    summary = tensor_parity(["logits", "box"], [logits, box], [logits + 0.01, box + 1.0])
    assert summary["cosine_min"] == summary["outputs"][0]["cosine_min"]  # the box's cosine does not count
    assert summary["range_error_max"] == summary["outputs"][1]["range_error_max"]
    only_small = tensor_parity(["box"], [box], [box])
    assert only_small["cosine_min"] is None
    from mobex.metrics.parity import not_meaningful

    assert "cosine_min" in not_meaningful(only_small) and "range_error_max" not in not_meaningful(only_small)


def test_a_one_value_classifier_is_binary() -> None:
    prob = np.array([[0.9], [0.2], [0.7], [0.4]])
    flipped = np.array([[0.9], [0.2], [0.3], [0.4]])  # sample 2 crosses 0.5
    m = classification_metrics(prob, flipped, np.array([1, 0, 1, 1]), None)
    assert m.binary_threshold == 0.5 and m.top1_agreement == pytest.approx(0.75)  # argmax would say 1.0
    assert m.accuracy_reference == pytest.approx(0.75) and m.accuracy == pytest.approx(0.5)
    logit = classification_metrics(np.array([[2.0], [-1.0]]), np.array([[2.0], [-1.0]]), None, None)
    assert logit.binary_threshold == 0.0


def _spec(task: str, names: tuple[str, ...], **fields) -> tasks.TaskSpec:
    return tasks.TaskSpec(task, names, **fields)


def test_classification_reads_its_class_output_and_gates_range_errors_on_the_others() -> None:
    rng = np.random.default_rng(2)
    box, scores = rng.uniform(0, 8, (30, 4)), rng.normal(size=(30, 10))
    spec = _spec("classification", ("box", "digit"), num_classes=10, class_output=1)
    worse = scores.copy()
    worse[:3] = -worse[:3]
    result = tasks.evaluate(spec, [box, scores], [box + 0.2, worse], None)
    assert result.parity["class_output"] == "digit"
    assert result.parity["top1_agreement"] == pytest.approx(
        classification_metrics(scores, worse, None, 10).top1_agreement
    )
    assert result.parity["range_error_max"] == pytest.approx(0.2 / (box.max() - box.min()))
    assert "cosine_min" not in result.not_applicable


def test_detection_without_any_original_detection_is_not_gated() -> None:
    scores = np.full((4, 6), 0.1)  # nothing reaches the 0.5 threshold
    boxes = np.tile(np.array([0, 0, 4, 4], float), (4, 6, 1))
    spec = _spec("detection", ("scores", "boxes"), detection=(0, 1, DecodeOptions()))
    result = tasks.evaluate(spec, [scores, boxes], [scores, boxes], None)
    assert result.parity["map50_agreement"] is None and result.parity["detections_reference"] == 0
    assert "detects nothing" in result.not_applicable["map50_agreement"]


def test_detection_agreement_through_evaluate() -> None:
    scores = np.zeros((2, 3))
    scores[0, 1] = scores[1, 2] = 0.9
    boxes = np.tile(np.array([[0, 0, 4, 4], [10, 10, 20, 20], [30, 30, 40, 40]], float), (2, 1, 1))
    spec = _spec("detection", ("scores", "boxes"), detection=(0, 1, DecodeOptions()))
    moved = boxes.copy()
    moved[1, 2] += 30.0  # the second sample's box is elsewhere in the variant
    result = tasks.evaluate(spec, [scores, boxes], [scores, moved], None)
    assert result.parity["matched_recall"] == 0.5 and result.parity["map50_agreement"] == pytest.approx(0.5)
    assert result.parity["scores_output"] == "scores" and not result.not_applicable.get("map50_agreement")


def test_embedding_with_too_few_samples_says_why() -> None:
    e = np.random.default_rng(3).normal(size=(6, 8))
    result = tasks.evaluate(_spec("embedding", ("e",), embedding=(0, 5)), [e], [e], None)
    assert result.parity["recall_at_k"] is None and "fewer than 2k + 1" in result.not_applicable["recall_at_k"]


def test_task_spec_from_a_recipe(sample_copy) -> None:
    from mobex.recipe import load_recipe

    folder = sample_copy("digits_cnn")
    text = (folder / "recipe.toml").read_text()
    text = text.replace('task = "classification"', 'task = "classification"\nclass_output = "digit"')
    text = text.replace('[[outputs]]\nname = "logits"', '[[outputs]]\nname = "box"\n[[outputs]]\nname = "digit"', 1)
    (folder / "recipe.toml").write_text(text)
    recipe = load_recipe(folder / "recipe.toml")
    spec = tasks.TaskSpec.of(recipe, recipe.output_names(2))
    assert (spec.task, spec.class_output, spec.num_classes) == ("classification", 1, 10)
