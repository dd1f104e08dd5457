"""Per group of records: task metrics where labels exist, drift against the reference, latency, throughput.

Drift reuses mobex.validate: the per-sample features are the ones the bundle's reference asset
plans (taken from each record's `input.features` / `prediction.features`, or computed with
`stats.features` from a sampled input, or from a classifier's class and score), and each feature
is compared with `drift`'s PSI and KS exactly as `mobex drift` compares a data file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from mobex.metrics.parity import macro_scores
from mobex.monitor.baseline import Baseline
from mobex.monitor.record import PredictionRecord, TelemetryLog
from mobex.validate import stats as stats_mod
from mobex.validate.drift import FeatureDrift
from mobex.validate.drift import _compare_feature as compare_feature  # the per-feature core of `drift.compare`


@dataclass
class GroupMetrics:
    window_start: str
    window_end: str
    segment: str
    predictions: int
    labelled: int = 0
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    throughput_per_s: float | None = None
    max_psi: float | None = None
    drifted_features: list[str] = field(default_factory=list)
    drift: list[FeatureDrift] = field(default_factory=list)
    ks_p_per_test: float | None = None
    alerts: list[dict] = field(default_factory=list)

    def to_dict(self, *, with_features: bool = True) -> dict:
        out = asdict(self)
        if not with_features:
            out.pop("drift")
        return out


def task_metrics(records: list[PredictionRecord], log: TelemetryLog, baseline: Baseline) -> dict:
    """Accuracy and macro precision/recall/F1 over the records that have a label and a predicted class."""
    truth, predicted = [], []
    for r in records:
        label = log.label_for(r)
        pred = r.prediction.class_ if r.prediction.class_ is not None else (
            baseline.class_index(r.prediction.label) if r.prediction.label is not None else None
        )  # fmt: skip
        if label is None or pred is None:
            continue
        index = baseline.class_index(label)
        if index is not None:
            truth.append(index)
            predicted.append(pred)
    if not truth:
        return {"labelled": 0}
    y, p = np.asarray(truth), np.asarray(predicted)
    precision, recall, f1 = macro_scores(y, p, max(len(baseline.labels), 1))
    return {"labelled": len(truth), "accuracy": float(np.mean(y == p)), "precision": precision, "recall": recall,
            "f1": f1}  # fmt: skip


def latency_metrics(records: list[PredictionRecord], window_s: float) -> dict:
    lat = np.asarray([r.latency_ms for r in records], np.float64)
    p50, p90, p99 = (float(v) for v in np.percentile(lat, [50, 90, 99]))
    return {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": float(lat.mean()),
            "throughput_per_s": len(records) / window_s}  # fmt: skip


def feature_columns(records: list[PredictionRecord], baseline: Baseline) -> dict[str, np.ndarray]:
    """One value per record for every planned feature (NaN where a record does not have it)."""
    n = len(records)
    columns: dict[str, np.ndarray] = {}
    for plan in baseline.plans("input"):
        _input_columns(plan, records, columns)
    for plan in baseline.plans("output"):
        for name, _kind, _ in stats_mod.features(plan, np.zeros((1, *plan["sample_shape"]))):
            col = np.full(n, np.nan)
            for i, r in enumerate(records):
                col[i] = _output_value(r, plan, name)
            columns[name] = col
    return columns


def _input_columns(plan: dict, records: list[PredictionRecord], columns: dict[str, np.ndarray]) -> None:
    n = len(records)
    names = [name for name, _, _ in stats_mod.features(plan, np.zeros((1, *plan["sample_shape"])))]
    for name in names:
        columns[name] = np.full(n, np.nan)
    sampled, rows = [], []
    for i, r in enumerate(records):
        given = (r.input.features or {}) if r.input else {}
        for name in names:
            if name in given:
                columns[name][i] = given[name]
        sample = (r.input.sample or {}).get(plan["tensor"]) if r.input else None
        if sample is not None and not any(name in given for name in names):
            try:
                arr = np.asarray(sample, np.float64)
            except (ValueError, TypeError):
                continue
            if list(arr.shape) == list(plan["sample_shape"]):
                sampled.append(arr)
                rows.append(i)
    if sampled:
        for name, _kind, column in stats_mod.features(plan, np.stack(sampled)):
            columns[name][rows] = column


def _output_value(record: PredictionRecord, plan: dict, name: str) -> float:
    given = record.prediction.features or {}
    if name in given:
        return float(given[name])
    if plan.get("layout") == "scores":
        if name.endswith(".predicted_class") and record.prediction.class_ is not None:
            return float(record.prediction.class_)
        if name.endswith(".top1_score") and record.prediction.score is not None:
            return float(record.prediction.score)
    return math.nan


def drift_rows(
    records: list[PredictionRecord], baseline: Baseline, *, psi_threshold: float, ks_p: float
) -> tuple[list[FeatureDrift], float | None]:
    """Every reference feature against this group's values; flagged as `mobex drift` flags them."""
    if not baseline.reference:
        return [], None
    plans = {p["tensor"]: p for p in baseline.reference["plans"]}
    columns = feature_columns(records, baseline)
    rows = []
    for ref in baseline.reference["features"]:
        column = columns.get(ref["name"])
        if column is None or not np.isfinite(column).any():
            continue
        rows.append(compare_feature(ref, plans[ref["tensor"]], ref["name"], ref["kind"], column))
    per_test = ks_p / max(1, sum(1 for r in rows if r.ks_p is not None))
    for r in rows:
        if r.psi is not None and math.isfinite(r.psi) and r.psi > psi_threshold:
            r.drifted = True
            r.reasons.append(f"PSI {r.psi:.3g} > {psi_threshold:g}")
        if r.ks_p is not None and r.ks_p < per_test:
            r.drifted = True
            r.reasons.append(f"KS p {r.ks_p:.2g} < {per_test:.2g}")
    return rows, per_test
