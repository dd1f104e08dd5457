"""Gates: limits a variant's metrics must meet before it may ship.

The limits (defaults per variant family, then the recipe's `[gates]` overrides) come from
mobex.metrics.limits. A metric that could not be measured never passes silently: it fails unless the
recipe sets `allow_unvalidated = true`. A metric that cannot tell good from bad for this model (a cosine
of one value, mAP without a single original detection: `not_applicable`, with the reason) is never gated by
default: its default limit is left out and listed by `not_applied`; a limit the recipe sets on it fails,
saying why.
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
    not_applicable: dict[str, str] | None = None,
) -> list[GateResult]:
    """Check every limit that applies to the variant against the measured `metrics`.

    `unvalidated_may_pass=False` (a variant that was never produced) keeps every gate failed, even with
    `allow_unvalidated`: that option lets an unmeasured variant ship, never a missing one.
    """
    results = []
    meaningless = not_applicable or {}
    for metric, (limit, source) in sorted(limits_for(spec, task, gates, has_labels).items()):
        direction = GATE_METRICS[metric]
        value = metrics.get(metric)
        if metric in meaningless and not_run_reason is None:
            if source.startswith("default"):
                continue  # listed by not_applied
            message = f"{metric}: not meaningful for this model ({meaningless[metric]}); drop this limit from {source}"
            results.append(GateResult(metric, None, limit, direction, False, source, message))
            continue
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


def not_applied(
    spec: VariantSpec, task: str, gates: GatesSection, not_applicable: dict[str, str], has_labels: bool = True
) -> list[dict]:
    """The default limits `evaluate` left out because their metric cannot tell good from bad here, with why."""
    return [
        {"metric": metric, "limit": limit, "source": source, "reason": not_applicable[metric]}
        for metric, (limit, source) in sorted(limits_for(spec, task, gates, has_labels).items())
        if metric in not_applicable and source.startswith("default")
    ]
