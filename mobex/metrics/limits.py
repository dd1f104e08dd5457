"""The limits a variant must meet: defaults per gate family, then the recipe's `[gates]` overrides.

The family comes from the variant registry (mobex.plugins): fp32 tight, fp16 looser, int8 and low-bit
judged on agreement with the original and accuracy drop. `[gates.all]` overrides every variant,
`[gates.variants.<name>]` every target's variant of that name, `[gates.variants."<target>:<name>"]` one
target's (most specific wins). Used by the validator's gates and by the quantizers that search for a
variant meeting its gate (TFLite static int8).
"""

from __future__ import annotations

from mobex.plugins import VariantSpec
from mobex.recipe import GatesSection

# Per family: metric -> limit, for every task. The range errors apply to outputs of a few values per sample
# (mobex.metrics.parity.SMALL_OUTPUT_VALUES), which get no cosine.
DEFAULT_GATES: dict[str, dict[str, float]] = {
    "fp32": {"cosine_min": 0.9999, "max_abs_error": 1e-3, "range_error_max": 1e-3},
    "fp16": {"cosine_min": 0.999, "snr_db": 30.0, "range_error_max": 0.01},
    "int8": {"cosine_min": 0.95, "snr_db": 12.0, "range_error_max": 0.10, "range_error_mean": 0.02},
    "low-bit": {"cosine_min": 0.90, "snr_db": 8.0, "range_error_max": 0.20, "range_error_mean": 0.05},
}
DEFAULT_CLASSIFICATION_GATES: dict[str, dict[str, float]] = {
    "fp32": {"top1_agreement": 0.995},
    "fp16": {"top1_agreement": 0.99, "accuracy_drop": 0.01},
    "int8": {"top1_agreement": 0.97, "accuracy_drop": 0.02},
    "low-bit": {"top1_agreement": 0.95, "accuracy_drop": 0.03},
}
# Per task, per family: the task's own metrics (mobex.metrics.tasks). `*_drop` limits need labels.
DEFAULT_TASK_GATES: dict[str, dict[str, dict[str, float]]] = {
    "classification": DEFAULT_CLASSIFICATION_GATES,
    "detection": {
        "fp32": {"map50_agreement": 0.99, "matched_iou_mean": 0.99, "score_error_mean": 1e-3},
        "fp16": {"map50_agreement": 0.98, "matched_iou_mean": 0.98, "score_error_mean": 0.01, "map50_drop": 0.01},
        "int8": {"map50_agreement": 0.90, "matched_iou_mean": 0.90, "score_error_mean": 0.03, "map50_drop": 0.02},
        "low-bit": {"map50_agreement": 0.80, "matched_iou_mean": 0.85, "score_error_mean": 0.06, "map50_drop": 0.03},
    },
    "segmentation": {
        "fp32": {"pixel_agreement": 0.999, "miou_agreement": 0.99},
        "fp16": {"pixel_agreement": 0.995, "miou_agreement": 0.98, "miou_drop": 0.01},
        "int8": {"pixel_agreement": 0.97, "miou_agreement": 0.90, "miou_drop": 0.02},
        "low-bit": {"pixel_agreement": 0.95, "miou_agreement": 0.85, "miou_drop": 0.03},
    },
    "embedding": {
        "fp32": {"recall_at_k": 0.99},
        "fp16": {"recall_at_k": 0.98},
        "int8": {"recall_at_k": 0.90},
        "low-bit": {"recall_at_k": 0.80},
    },
}


def limits_for(
    spec: VariantSpec, task: str, gates: GatesSection, has_labels: bool = True
) -> dict[str, tuple[float, str]]:
    """metric -> (limit, source) for one variant, defaults first, then recipe overrides.

    Without labels there is nothing to drop against, so the default `*_drop` limits (accuracy, mAP, mIoU)
    do not apply (agreement with the original still does); a limit the recipe sets explicitly always
    applies, and fails when it cannot be measured.
    """
    fam = spec.family
    limits: dict[str, tuple[float, str]] = {m: (v, f"default ({fam})") for m, v in DEFAULT_GATES[fam].items()}
    task_gates = DEFAULT_TASK_GATES.get(task, {}).get(fam, {})
    limits.update(
        {m: (v, f"default ({fam}, {task})") for m, v in task_gates.items() if has_labels or not m.endswith("_drop")}
    )
    limits.update({m: (v, "recipe [gates.all]") for m, v in gates.all.items()})
    for key, source in ((spec.name, f"recipe [gates.variants.{spec.name}]"),
                        (spec.qualified, f'recipe [gates.variants."{spec.qualified}"]')):  # fmt: skip
        limits.update({m: (v, source) for m, v in gates.variants.get(key, {}).items()})
    return limits
