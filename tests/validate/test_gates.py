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
    )
    failed = [r for r in results if not r.passed]
    assert [r.metric for r in failed] == ["top1_agreement"]
    assert "must be >= 0.97" in failed[0].message and "off by 0.07" in failed[0].message


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
