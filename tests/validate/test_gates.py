"""Gate defaults per family, recipe overrides (all, every target's variant, one target's), unmeasured metrics."""

from __future__ import annotations

import pytest

from mobex.metrics.limits import limits_for
from mobex.plugins import variant
from mobex.recipe import GatesSection
from mobex.validate.gates import evaluate

TFLITE_INT8 = variant("tflite", "int8")
COREML_INT8_WEIGHTS = variant("coreml", "int8-weights")
TFLITE_INT8_WEIGHTS = variant("tflite", "int8-weights")


def test_defaults_per_family() -> None:
    gates = GatesSection()
    assert limits_for(variant("tflite", "fp32"), "classification", gates)["max_abs_error"][0] == 1e-3
    assert limits_for(TFLITE_INT8, "classification", gates)["top1_agreement"][0] == 0.97
    assert "top1_agreement" not in limits_for(TFLITE_INT8, "regression", gates)
    assert limits_for(variant("coreml", "palettize-4bit"), "other", gates)["cosine_min"][0] == 0.90
    assert limits_for(variant("coreml", "palettize-8bit"), "other", gates)["cosine_min"][0] == 0.95


def test_recipe_overrides_all_then_variant() -> None:
    gates = GatesSection(all={"cosine_min": 0.5}, variants={"int8": {"cosine_min": 0.99}})
    assert limits_for(variant("tflite", "fp16"), "other", gates)["cosine_min"] == (0.5, "recipe [gates.all]")
    assert limits_for(TFLITE_INT8, "other", gates)["cosine_min"] == (0.99, "recipe [gates.variants.int8]")


def test_an_override_can_name_one_target() -> None:
    gates = GatesSection(
        variants={"int8-weights": {"cosine_min": 0.97}, "coreml:int8-weights": {"cosine_min": 0.99}}
    )
    assert limits_for(COREML_INT8_WEIGHTS, "other", gates)["cosine_min"] == (
        0.99,
        'recipe [gates.variants."coreml:int8-weights"]',
    )
    tflite = limits_for(TFLITE_INT8_WEIGHTS, "other", gates)["cosine_min"]
    assert tflite == (0.97, "recipe [gates.variants.int8-weights]")


def test_an_override_of_no_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="names no variant"):
        GatesSection(variants={"int9": {"cosine_min": 0.9}})
    with pytest.raises(ValueError, match="names no variant"):
        GatesSection(variants={"tflite:w8a8": {"cosine_min": 0.9}})  # a Core ML variant


def test_failing_gate_says_by_how_much() -> None:
    results = evaluate(
        TFLITE_INT8,
        "classification",
        {"top1_agreement": 0.9, "accuracy_drop": 0.0, "cosine_min": 0.99, "snr_db": 20.0},
        GatesSection(),
        not_applicable=NO_SMALL_OUTPUTS,
    )
    failed = [r for r in results if not r.passed]
    assert [r.metric for r in failed] == ["top1_agreement"]
    assert "must be >= 0.97" in failed[0].message and "off by 0.07" in failed[0].message


NO_SMALL_OUTPUTS = {"range_error_max": "no small output", "range_error_mean": "no small output"}


def test_a_meaningless_metric_is_not_gated_by_default_and_the_report_says_why() -> None:
    from mobex.validate.gates import not_applied

    why = {**NO_SMALL_OUTPUTS, "cosine_min": "every output has 1 value per sample"}
    metrics = {"top1_agreement": 1.0, "accuracy_drop": 0.0, "snr_db": 20.0, "cosine_min": None}
    results = evaluate(TFLITE_INT8, "classification", metrics, GatesSection(), not_applicable=why)
    assert {r.metric for r in results} == {"top1_agreement", "accuracy_drop", "snr_db"}
    assert all(r.passed for r in results)
    skipped = not_applied(TFLITE_INT8, "classification", GatesSection(), why)
    assert {s["metric"] for s in skipped} == {"cosine_min", "range_error_max", "range_error_mean"}
    cosine = next(s for s in skipped if s["metric"] == "cosine_min")
    assert cosine["limit"] == 0.95 and "1 value" in cosine["reason"] and cosine["source"].startswith("default")
    # without the reason, an unmeasured default fails as before: nothing passes silently
    plain = evaluate(TFLITE_INT8, "classification", metrics, GatesSection(), not_applicable=NO_SMALL_OUTPUTS)
    assert [r.metric for r in plain if not r.passed] == ["cosine_min"]


def test_a_recipe_limit_on_a_meaningless_metric_fails_and_says_why() -> None:
    gates = GatesSection(all={"cosine_min": 0.99})
    why = {"cosine_min": "every output has 1 value per sample"}
    results = evaluate(TFLITE_INT8, "other", {"snr_db": 30.0}, gates, not_applicable={**NO_SMALL_OUTPUTS, **why})
    cosine = next(r for r in results if r.metric == "cosine_min")
    assert not cosine.passed and "not meaningful" in cosine.message and "1 value per sample" in cosine.message


def test_task_defaults() -> None:
    gates = GatesSection()
    detection = limits_for(TFLITE_INT8, "detection", gates)
    assert detection["map50_agreement"] == (0.90, "default (int8, detection)")
    assert {"matched_iou_mean", "score_error_mean", "map50_drop"} <= set(detection)
    assert "map50_drop" not in limits_for(TFLITE_INT8, "detection", gates, has_labels=False)
    assert limits_for(variant("tflite", "fp32"), "segmentation", gates)["pixel_agreement"][0] == 0.999
    assert "miou_drop" not in limits_for(TFLITE_INT8, "segmentation", gates, has_labels=False)
    assert limits_for(variant("coreml", "fp16"), "embedding", gates)["recall_at_k"][0] == 0.98
    assert "recall_at_k" not in limits_for(TFLITE_INT8, "classification", gates)


def test_unmeasured_metric_fails_unless_allowed() -> None:
    fp16 = variant("tflite", "fp16")
    results = evaluate(fp16, "other", {}, GatesSection(), "unsupported op foo")
    assert results and not any(r.passed for r in results)
    assert "unsupported op foo" in results[0].message
    allowed = evaluate(fp16, "other", {}, GatesSection(allow_unvalidated=True), "unsupported op foo")
    assert all(r.passed for r in allowed)
    missing = evaluate(fp16, "other", {}, GatesSection(allow_unvalidated=True), "gone", unvalidated_may_pass=False)
    assert not any(r.passed for r in missing)  # a variant that was never produced cannot pass


def test_accuracy_drop_needs_labels_unless_the_recipe_asks_for_it() -> None:
    assert "accuracy_drop" not in limits_for(TFLITE_INT8, "classification", GatesSection(), has_labels=False)
    assert "top1_agreement" in limits_for(TFLITE_INT8, "classification", GatesSection(), has_labels=False)
    explicit = GatesSection(all={"accuracy_drop": 0.01})
    results = evaluate(TFLITE_INT8, "classification", {}, explicit, "no labels", has_labels=False)
    drop = [r for r in results if r.metric == "accuracy_drop"]
    assert drop and not drop[0].passed
