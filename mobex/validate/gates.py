"""Gates: limits a variant's metrics must meet before it may ship.

The limits (defaults per variant family, then the recipe's `[gates]` overrides) come from
mobex.metrics.limits. A metric that could not be measured never passes silently: it fails unless the
recipe sets `allow_unvalidated = true`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mobex.metrics.limits import limits_for
from mobex.plugins import VariantSpec
from mobex.recipe import GATE_METRICS, GatesSection


@dataclass(frozen=True)
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


def evaluate(
    spec: VariantSpec,
    task: str,
    metrics: dict[str, float | None],
    gates: GatesSection,
    not_run_reason: str | None = None,
    has_labels: bool = True,
    unvalidated_may_pass: bool = True,
) -> list[GateResult]:
    """Check every limit that applies to the variant against the measured `metrics`.

    `unvalidated_may_pass=False` (a variant that was never produced) keeps every gate failed, even with
    `allow_unvalidated`: that option lets an unmeasured variant ship, never a missing one.
    """
    results = []
    for metric, (limit, source) in sorted(limits_for(spec, task, gates, has_labels).items()):
        direction = GATE_METRICS[metric]
        value = metrics.get(metric)
        if value is None:
            reason = not_run_reason or f"{metric} was not measured"
            passed = gates.allow_unvalidated
            message = f"{metric}: not measured ({reason})" + ("; allowed by allow_unvalidated" if passed else "")
            passed = passed and unvalidated_may_pass
        else:
            passed = value <= limit if direction == "max" else value >= limit
            op = "<=" if direction == "max" else ">="
            verdict = "ok" if passed else "FAILED"
            miss = "" if passed else f", off by {abs(value - limit):.4g}"
            message = f"{metric} = {value:.6g} (must be {op} {limit:.6g}){miss}: {verdict}"
        results.append(GateResult(metric, value, limit, direction, passed, source, message))
    return results
