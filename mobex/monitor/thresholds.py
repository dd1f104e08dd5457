"""Alerts: a group's numbers against the thresholds ([monitoring] in the recipe, overridden on the command line).

Each alert names the metric, the window and segment, the field value, the build's validated value
(when there is one) and the limit. A group with fewer than `min_samples` predictions (or
`min_labels` labels, for task metrics) raises none: its numbers are shown, but they are too noisy to act on.
"""

from __future__ import annotations

from typing import Any

from mobex.monitor.baseline import Baseline
from mobex.monitor.evaluate import GroupMetrics
from mobex.recipe import MonitoringSection, load_recipe

Thresholds = MonitoringSection


def thresholds_from(recipe: Any | None, overrides: dict[str, Any]) -> Thresholds:
    """The recipe's [monitoring] table (or the defaults), with the command line's values on top."""
    base = load_recipe(recipe).monitoring if recipe is not None else MonitoringSection()
    given = {k: v for k, v in overrides.items() if v is not None}
    return Thresholds.model_validate({**base.model_dump(), **given})


def _alert(g: GroupMetrics, metric: str, value: float, limit: float, text: str, validated: float | None = None) -> dict:
    where = f"{g.window_start} [{g.segment}]"
    return {"metric": metric, "window_start": g.window_start, "segment": g.segment, "value": value,
            "validated": validated, "limit": limit, "message": f"{where}: {text}"}  # fmt: skip


def check_group(g: GroupMetrics, baseline: Baseline, t: Thresholds) -> list[dict]:
    alerts: list[dict] = []
    if g.labelled >= t.min_labels:
        for metric, limit in (("accuracy", t.max_accuracy_drop), ("f1", t.max_f1_drop),
                              ("precision", t.max_precision_drop), ("recall", t.max_recall_drop)):  # fmt: skip
            value, validated = getattr(g, metric), baseline.metrics.get(metric)
            if limit is None or value is None or validated is None:
                continue
            if validated - value > limit:
                alerts.append(_alert(g, metric, value, limit, f"{metric} {value:.4f} is {validated - value:.4f} below "
                                     f"the validated {validated:.4f} (max drop {limit:g})", validated))  # fmt: skip
    if g.predictions < t.min_samples:
        return alerts
    if g.drifted_features:
        alerts.append(_alert(g, "drift", g.max_psi or 0.0, t.psi, f"drift in {len(g.drifted_features)} feature(s): "
                             f"{', '.join(g.drifted_features[:5])}"))  # fmt: skip
    alerts += _latency_alerts(g, baseline, t)
    if t.min_throughput_per_s is not None and (g.throughput_per_s or 0.0) < t.min_throughput_per_s:
        alerts.append(_alert(g, "throughput", g.throughput_per_s or 0.0, t.min_throughput_per_s,
                             f"throughput {g.throughput_per_s:.3g}/s below {t.min_throughput_per_s:g}/s"))  # fmt: skip
    return alerts


def _latency_alerts(g: GroupMetrics, baseline: Baseline, t: Thresholds) -> list[dict]:
    alerts = []
    for metric, limit in (("p50_ms", t.max_p50_ms), ("p99_ms", t.max_p99_ms)):
        value = getattr(g, metric)
        if limit is not None and value is not None and value > limit:
            alerts.append(_alert(g, metric, value, limit, f"{metric} {value:.3f} ms above {limit:g} ms"))
    if t.max_latency_ratio is not None and baseline.latency:
        for metric in ("p50_ms", "p99_ms"):
            value, validated = getattr(g, metric), baseline.latency.get(metric)
            if value is None or not validated:
                continue
            if value > t.max_latency_ratio * validated:
                alerts.append(_alert(g, f"{metric}_ratio", value / validated, t.max_latency_ratio,
                                     f"{metric} {value:.3f} ms is {value / validated:.2f}x the build's {validated:.3f} "
                                     f"ms (max {t.max_latency_ratio:g}x)", validated))  # fmt: skip
    return alerts
