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

# Per family: metric -> limit. Classification adds agreement and accuracy drop.
DEFAULT_GATES: dict[str, dict[str, float]] = {
    "fp32": {"cosine_min": 0.9999, "max_abs_error": 1e-3},
    "fp16": {"cosine_min": 0.999, "snr_db": 30.0},
    "int8": {"cosine_min": 0.95, "snr_db": 12.0},
    "low-bit": {"cosine_min": 0.90, "snr_db": 8.0},
}
DEFAULT_CLASSIFICATION_GATES: dict[str, dict[str, float]] = {
    "fp32": {"top1_agreement": 0.995},
    "fp16": {"top1_agreement": 0.99, "accuracy_drop": 0.01},
    "int8": {"top1_agreement": 0.97, "accuracy_drop": 0.02},
    "low-bit": {"top1_agreement": 0.95, "accuracy_drop": 0.03},
}


def limits_for(
    spec: VariantSpec, task: str, gates: GatesSection, has_labels: bool = True
) -> dict[str, tuple[float, str]]:
    """metric -> (limit, source) for one variant, defaults first, then recipe overrides.

    Without labels there is no accuracy to drop, so the default `accuracy_drop` limit does not
    apply (agreement with the original still does); a limit the recipe sets explicitly always
    applies, and fails when it cannot be measured.
    """
    fam = spec.family
    limits: dict[str, tuple[float, str]] = {m: (v, f"default ({fam})") for m, v in DEFAULT_GATES[fam].items()}
    if task == "classification":
        limits.update(
            {
                m: (v, f"default ({fam}, classification)")
                for m, v in DEFAULT_CLASSIFICATION_GATES[fam].items()
                if has_labels or m != "accuracy_drop"
            }
        )
    limits.update({m: (v, "recipe [gates.all]") for m, v in gates.all.items()})
    for key, source in ((spec.name, f"recipe [gates.variants.{spec.name}]"),
                        (spec.qualified, f'recipe [gates.variants."{spec.qualified}"]')):  # fmt: skip
        limits.update({m: (v, source) for m, v in gates.variants.get(key, {}).items()})
    return limits
