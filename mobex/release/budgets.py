"""The `[release]` budgets: how much a new release may grow, slow down or drift from the one it replaces.

Each budget reads a `BaselineComparison` (mobex.release.compare) and gives a `GateResult` like a variant
gate, so reports and JUnit show both the same way. A budget that is set but cannot be measured fails, with
one exception: the latency budget of a target this host cannot time at all (Core ML off macOS) is reported
as not checked on this host, else every iOS release built on Linux would fail it.
"""

from __future__ import annotations

from collections.abc import Callable

from mobex.recipe import ReleaseSection
from mobex.release.compare import BaselineComparison
from mobex.validate.gates import GateResult

# budget -> (direction, what it reads from the comparison, what it is called in messages)
_BUDGETS: dict[str, tuple[str, Callable[[BaselineComparison], float | None], str]] = {
    "max_size_growth": ("max", lambda c: c.size_growth, "size growth"),
    "max_latency_regression": ("max", lambda c: _minus_one((c.latency or {}).get("ratio")), "p50 regression"),
    "max_accuracy_drop": ("max", lambda c: _drop(c, "accuracy"), "accuracy drop"),
    "max_f1_drop": ("max", lambda c: _drop(c, "f1"), "F1 drop"),
    "min_agreement_with_previous": ("min", lambda c: (c.agreement or {}).get("top1_agreement"), "top-1 agreement"),
    "min_cosine_with_previous": ("min", lambda c: (c.agreement or {}).get("cosine_min"), "output cosine"),
}


def _minus_one(value: float | None) -> float | None:
    return None if value is None else value - 1


def _drop(comparison: BaselineComparison, metric: str) -> float | None:
    old = comparison.previous.get("metrics", {}).get(metric)
    new = comparison.new.get("metrics", {}).get(metric)
    return None if old is None or new is None else old - new


def evaluate_budgets(release: ReleaseSection, comparison: BaselineComparison) -> list[GateResult]:
    """Every budget the recipe sets, checked against the comparison (unmeasurable: failed, with why)."""
    results = []
    why = "; ".join(comparison.notes) or "not measured"
    for name, (direction, read, label) in _BUDGETS.items():
        limit = getattr(release, name)
        if limit is None:
            continue
        value = read(comparison)
        previous = comparison.previous.get("version")
        if value is None and name == "max_latency_regression" and comparison.host_cannot_time:
            results.append(GateResult(name, None, limit, direction, True, "recipe [release]",
                                      f"{name}: not checked on this host ({why})"))  # fmt: skip
            continue
        if value is None:
            results.append(GateResult(name, None, limit, direction, False, "recipe [release]",
                                      f"{name}: {label} against {previous} not measured ({why})"))  # fmt: skip
            continue
        passed = value <= limit if direction == "max" else value >= limit
        op = "<=" if direction == "max" else ">="
        verdict = "ok" if passed else "FAILED"
        message = f"{name}: {label} against {previous} = {value:.6g} (must be {op} {limit:.6g}): {verdict}"
        results.append(GateResult(name, value, limit, direction, passed, "recipe [release]", message))
    return results
