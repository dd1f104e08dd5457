"""Gate defaults per family, recipe overrides, and metrics that were never measured."""

from __future__ import annotations

from mobex.recipe import GatesSection
from mobex.validate.gates import evaluate, limits_for


def test_defaults_per_family() -> None:
    gates = GatesSection()
    assert limits_for("fp32", "classification", gates)["max_abs_error"][0] == 1e-3
    assert limits_for("int8", "classification", gates)["top1_agreement"][0] == 0.97
    assert "top1_agreement" not in limits_for("int8", "regression", gates)
    assert limits_for("palettize-4bit", "other", gates)["cosine_min"][0] == 0.90


def test_recipe_overrides_all_then_variant() -> None:
    gates = GatesSection(all={"cosine_min": 0.5}, variants={"int8": {"cosine_min": 0.99}})
    assert limits_for("fp16", "other", gates)["cosine_min"] == (0.5, "recipe [gates.all]")
    assert limits_for("int8", "other", gates)["cosine_min"] == (0.99, "recipe [gates.variants.int8]")


def test_failing_gate_says_by_how_much() -> None:
    results = evaluate(
        "int8",
        "classification",
        {"top1_agreement": 0.9, "accuracy_drop": 0.0, "cosine_min": 0.99, "snr_db": 20.0},
        GatesSection(),
    )
    failed = [r for r in results if not r.passed]
    assert [r.metric for r in failed] == ["top1_agreement"]
    assert "must be >= 0.97" in failed[0].message and "off by 0.07" in failed[0].message


def test_unmeasured_metric_fails_unless_allowed() -> None:
    results = evaluate("fp16", "other", {}, GatesSection(), "unsupported op foo")
    assert results and not any(r.passed for r in results)
    assert "unsupported op foo" in results[0].message
    allowed = evaluate("fp16", "other", {}, GatesSection(allow_unvalidated=True), "unsupported op foo")
    assert all(r.passed for r in allowed)


def test_accuracy_drop_needs_labels_unless_the_recipe_asks_for_it() -> None:
    assert "accuracy_drop" not in limits_for("int8", "classification", GatesSection(), has_labels=False)
    assert "top1_agreement" in limits_for("int8", "classification", GatesSection(), has_labels=False)
    explicit = GatesSection(all={"accuracy_drop": 0.01})
    results = evaluate("int8", "classification", {}, explicit, "no labels", has_labels=False)
    drop = [r for r in results if r.metric == "accuracy_drop"]
    assert drop and not drop[0].passed
