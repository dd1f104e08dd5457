"""Gates: limits a variant's metrics must meet before it may ship.

Defaults depend on the variant family (fp32 tight, fp16 looser, int8 and low-bit judged on
agreement with the original and accuracy drop); the recipe's `[gates]` table overrides them for all
variants (`[gates.all]`) or one variant (`[gates.variants.<name>]`). A metric that could not be
measured never passes silently: it fails unless the recipe sets `allow_unvalidated = true`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mobex.recipe import GATE_METRICS, GatesSection
from mobex.variants import family

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


@dataclass
class GateResult:
    metric: str
    value: float | None
    limit: float
    direction: str  # "max": value <= limit; "min": value >= limit
    passed: bool
    source: str  # where the limit came from
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def limits_for(variant: str, task: str, gates: GatesSection, has_labels: bool = True) -> dict[str, tuple[float, str]]:
    """metric -> (limit, source) for one variant, defaults first, then recipe overrides.

    Without labels there is no accuracy to drop, so the default `accuracy_drop` limit does not
    apply (agreement with the original still does); a limit the recipe sets explicitly always
    applies, and fails when it cannot be measured.
    """
    fam = family(variant)
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
    limits.update({m: (v, f"recipe [gates.variants.{variant}]") for m, v in gates.variants.get(variant, {}).items()})
    return limits


def evaluate(
    variant: str,
    task: str,
    metrics: dict[str, float | None],
    gates: GatesSection,
    not_run_reason: str | None = None,
    has_labels: bool = True,
) -> list[GateResult]:
    """Check every limit that applies to `variant` against the measured `metrics`."""
    results = []
    for metric, (limit, source) in sorted(limits_for(variant, task, gates, has_labels).items()):
        direction = GATE_METRICS[metric]
        value = metrics.get(metric)
        if value is None:
            reason = not_run_reason or f"{metric} was not measured"
            passed = gates.allow_unvalidated
            message = f"{metric}: not measured ({reason})" + ("; allowed by allow_unvalidated" if passed else "")
        else:
            passed = value <= limit if direction == "max" else value >= limit
            op = "<=" if direction == "max" else ">="
            verdict = "ok" if passed else "FAILED"
            miss = "" if passed else f", off by {abs(value - limit):.4g}"
            message = f"{metric} = {value:.6g} (must be {op} {limit:.6g}){miss}: {verdict}"
        results.append(GateResult(metric, value, limit, direction, passed, source, message))
    return results
