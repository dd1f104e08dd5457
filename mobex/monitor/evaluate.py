"""Per group of records: task metrics where labels exist, drift against the reference, latency, throughput.

Drift reuses mobex.validate: the per-sample features are the ones the bundle's reference asset
plans (taken from each record's `input.features` / `prediction.features`, or computed with
`stats.features` from a sampled input, or from a classifier's class and score), and each feature
is compared with `drift`'s PSI and KS exactly as `mobex drift` compares a data file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from mobex.metrics.parity import macro_scores
from mobex.monitor.baseline import Baseline
from mobex.monitor.record import PredictionRecord, TelemetryLog
from mobex.validate import stats as stats_mod
from mobex.validate.drift import FeatureDrift, compare


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


def feature_columns(records: list[PredictionRecord], plan: dict) -> np.ndarray:
    """[records, features of the plan]: each record's value of each feature the plan makes (NaN if missing)."""
    names = [name for name, _, _ in stats_mod.features(plan, np.zeros((1, *plan["sample_shape"])))]
    columns = np.full((len(records), len(names)), np.nan)
    sampled, rows = [], []
    for i, r in enumerate(records):
        given = _given(r, plan)
        for j, name in enumerate(names):
            value = given.get(name)
            if value is None and plan.get("layout") == "scores":
                value = _class_or_score(r, name)
            if value is not None:
                columns[i, j] = value
        sample = (r.input.sample or {}).get(plan["tensor"]) if r.input and plan["role"] == "input" else None
        if sample is not None and not any(name in given for name in names):
            arr = _sample_array(sample, plan)
            if arr is not None:
                sampled.append(arr)
                rows.append(i)
    if sampled:
        for j, (_, _, column) in enumerate(stats_mod.features(plan, np.stack(sampled))):
            columns[rows, j] = column
    return columns


def _given(record: PredictionRecord, plan: dict) -> dict[str, float]:
    if plan["role"] == "input":
        return (record.input.features or {}) if record.input else {}
    return record.prediction.features or {}


def _class_or_score(record: PredictionRecord, name: str) -> float | None:
    if name.endswith(".predicted_class"):
        return None if record.prediction.class_ is None else float(record.prediction.class_)
    if name.endswith(".top1_score"):
        return record.prediction.score
    return None


def _sample_array(sample: object, plan: dict) -> np.ndarray | None:
    try:
        arr = np.asarray(sample, np.float64)
    except (ValueError, TypeError):
        return None
    return arr if list(arr.shape) == list(plan["sample_shape"]) else None


def _as_tensor(plan: dict, columns: np.ndarray) -> tuple[dict, np.ndarray]:
    """A plan and tensor from which `stats.features` gives back exactly these feature columns.

    Numeric features: an "elements" plan over the [records, features] matrix. A classifier's scores:
    for each record with a class and a top-1 probability, a row of zeros holding that probability at
    that class (so argmax is the class and max the probability, with softmax off).
    """
    names = [name for name, _, _ in stats_mod.features(plan, np.zeros((1, *plan["sample_shape"])))]
    if plan.get("layout") != "scores":
        return {**plan, "layout": "elements", "sample_shape": [len(names)], "feature_names": names}, columns
    score_col, class_col = names.index(f"{plan['tensor']}.top1_score"), names.index(f"{plan['tensor']}.predicted_class")
    ok = np.isfinite(columns[:, score_col]) & np.isfinite(columns[:, class_col]) & (columns[:, score_col] > 0)
    classes = columns[ok, class_col].astype(np.int64)
    rows = np.zeros((int(ok.sum()), int(plan["classes"])))
    inside = classes < rows.shape[1]
    rows[np.flatnonzero(inside), classes[inside]] = columns[ok, score_col][inside]
    return {**plan, "softmax": False, "sample_shape": [rows.shape[1]]}, rows[inside]


def drift_rows(
    records: list[PredictionRecord], baseline: Baseline, *, psi_threshold: float, ks_p: float
) -> tuple[list[FeatureDrift], float | None]:
    """Every reference feature against this group's values, by `mobex.validate.drift.compare` itself."""
    if not baseline.reference:
        return [], None
    plans, inputs, outputs = [], {}, []
    for plan in baseline.reference["plans"]:
        as_plan, tensor = _as_tensor(plan, feature_columns(records, plan))
        plans.append(as_plan)
        if plan["role"] == "input":
            inputs[plan["tensor"]] = tensor
        else:
            outputs.append(tensor)
    reference = {**baseline.reference, "plans": plans}
    usable = outputs if all(len(o) for o in outputs) else None  # no record says what an output was: inputs only
    rows, per_test = compare(reference, inputs, usable, psi_threshold=psi_threshold, ks_p=ks_p)
    return [r for r in rows if r.samples], per_test
