"""Output parity between the original model and an exported variant, and task metrics.

All metrics are computed over the whole validation split. Outputs are compared per output tensor;
the variant's headline numbers are the worst over its outputs. Relative errors divide by
|reference|, floored at 0.1% of the output's RMS, so reference values that happen to be ~0 do not
turn a tiny absolute error into an enormous relative one. Every output also carries a histogram of
its absolute errors on fixed decade bins (the same bins for every variant, so the report can plot
them side by side).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# SNR of identical outputs is infinite; JSON has no infinity, so it is reported as this cap.
SNR_CAP_DB = 300.0
# Relative errors are taken against max(|reference|, REL_FLOOR * RMS of the reference output).
REL_FLOOR = 1e-3
# Absolute-error histogram bins: [0, 1e-8), [1e-8, 1e-7), ..., [1, 10), [10, 100), [100, inf).
ERROR_HISTOGRAM_EDGES: tuple[float, ...] = tuple(10.0**k for k in range(-8, 3))


@dataclass
class OutputParity:
    name: str
    max_abs_error: float
    mean_abs_error: float
    max_rel_error: float
    mean_rel_error: float
    cosine_min: float
    cosine_mean: float
    snr_db: float
    abs_error_histogram: dict


@dataclass
class ClassificationMetrics:
    """Agreement with the original model; with labels, task metrics of both and what the variant lost.

    precision / recall / f1 are macro averages over the classes present in the labels or the predictions.
    """

    top1_agreement: float
    top5_agreement: float | None
    accuracy: float | None = None
    accuracy_reference: float | None = None
    accuracy_drop: float | None = None
    precision: float | None = None
    precision_reference: float | None = None
    recall: float | None = None
    recall_reference: float | None = None
    f1: float | None = None
    f1_reference: float | None = None
    f1_drop: float | None = None


@dataclass
class RegressionMetrics:
    """Errors against the labels of the variant and of the original; *_increase is what the variant lost."""

    mae: float
    rmse: float
    mae_reference: float
    rmse_reference: float
    mae_increase: float
    rmse_increase: float


def output_parity(name: str, reference: np.ndarray, candidate: np.ndarray) -> OutputParity:
    """Error metrics of one output; arrays are (num_samples, ...)."""
    ref = reference.astype(np.float64).reshape(reference.shape[0], -1)
    cand = candidate.astype(np.float64).reshape(candidate.shape[0], -1)
    if ref.shape != cand.shape:
        raise ValueError(f"output {name!r}: reference shape {reference.shape} != variant shape {candidate.shape}")
    diff = np.abs(ref - cand)
    rms = float(np.sqrt(np.mean(ref**2))) if ref.size else 0.0
    scale = np.maximum(np.abs(ref), max(REL_FLOOR * rms, 1e-12))
    rel = diff / scale
    dots = np.sum(ref * cand, axis=1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    both_zero = norms == 0
    cosine = np.where(both_zero, np.where(np.all(diff == 0, axis=1), 1.0, 0.0), dots / np.where(both_zero, 1, norms))
    noise = float(np.sum((ref - cand) ** 2))
    signal = float(np.sum(ref**2))
    if not np.isfinite(cand).all():
        snr = -SNR_CAP_DB
    elif noise == 0:
        snr = SNR_CAP_DB
    elif signal == 0:
        snr = -SNR_CAP_DB
    else:
        snr = min(SNR_CAP_DB, 10.0 * math.log10(signal / noise))
    return OutputParity(
        name=name,
        max_abs_error=_finite(diff.max()),
        mean_abs_error=_finite(diff.mean()),
        max_rel_error=_finite(rel.max()),
        mean_rel_error=_finite(rel.mean()),
        cosine_min=_finite(cosine.min()),
        cosine_mean=_finite(cosine.mean()),
        snr_db=snr,
        abs_error_histogram=error_histogram(diff),
    )


def error_histogram(abs_errors: np.ndarray) -> dict:
    """Counts of absolute errors per fixed decade bin (`edges` are the inner bin edges; NaN counts as above)."""
    flat = np.asarray(abs_errors, np.float64).reshape(-1)
    flat = np.where(np.isfinite(flat), flat, np.inf)
    index = np.searchsorted(np.asarray(ERROR_HISTOGRAM_EDGES), flat, side="right")
    counts = np.bincount(index, minlength=len(ERROR_HISTOGRAM_EDGES) + 1)
    return {"edges": list(ERROR_HISTOGRAM_EDGES), "counts": [int(c) for c in counts], "zeros": int(np.sum(flat == 0))}


def _finite(value: float) -> float:
    """NaN/inf errors (a broken variant) become a huge finite number so JSON and gates stay valid."""
    value = float(value)
    return value if math.isfinite(value) else 1e30


def classification_metrics(
    reference_scores: np.ndarray, candidate_scores: np.ndarray, labels: np.ndarray | None, num_classes: int | None
) -> ClassificationMetrics:
    """Top-k agreement with the original model; accuracy, precision, recall and F1 against labels if any."""
    ref = reference_scores.reshape(reference_scores.shape[0], -1)
    cand = candidate_scores.reshape(candidate_scores.shape[0], -1)
    ref_top1 = ref.argmax(axis=1)
    cand_top1 = cand.argmax(axis=1)
    top1 = float(np.mean(ref_top1 == cand_top1))
    top5 = None
    if ref.shape[1] > 5:
        cand_top5 = np.argsort(-cand, axis=1, kind="stable")[:, :5]
        top5 = float(np.mean(np.any(cand_top5 == ref_top1[:, None], axis=1)))
    if labels is None:
        return ClassificationMetrics(top1, top5)
    classes = num_classes or ref.shape[1]
    acc = float(np.mean(cand_top1 == labels))
    acc_ref = float(np.mean(ref_top1 == labels))
    p, r, f = macro_scores(labels, cand_top1, classes)
    p_ref, r_ref, f_ref = macro_scores(labels, ref_top1, classes)
    return ClassificationMetrics(
        top1_agreement=top1,
        top5_agreement=top5,
        accuracy=acc,
        accuracy_reference=acc_ref,
        accuracy_drop=acc_ref - acc,
        precision=p,
        precision_reference=p_ref,
        recall=r,
        recall_reference=r_ref,
        f1=f,
        f1_reference=f_ref,
        f1_drop=f_ref - f,
    )


def macro_scores(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> tuple[float, float, float]:
    """Macro precision, recall and F1 over the classes present in labels or predictions.

    A class never predicted has precision 0, a class never in the labels recall 0 (scikit-learn's
    `zero_division=0` with `labels` = the classes seen).
    """
    precisions, recalls, f1s = [], [], []
    for c in range(max(num_classes, int(max(labels.max(initial=0), predicted.max(initial=0))) + 1)):
        tp = int(np.sum((predicted == c) & (labels == c)))
        fp = int(np.sum((predicted == c) & (labels != c)))
        fn = int(np.sum((predicted != c) & (labels == c)))
        if tp + fp + fn == 0:
            continue
        precisions.append(tp / (tp + fp) if tp + fp else 0.0)
        recalls.append(tp / (tp + fn) if tp + fn else 0.0)
        f1s.append(2 * tp / (2 * tp + fp + fn))
    if not f1s:
        return 0.0, 0.0, 0.0
    return float(np.mean(precisions)), float(np.mean(recalls)), float(np.mean(f1s))


def macro_f1(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Macro-averaged F1 over the classes present in labels or predictions."""
    return macro_scores(labels, predicted, num_classes)[2]


def regression_metrics(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> RegressionMetrics:
    ref = reference.reshape(labels.shape[0], -1).astype(np.float64)
    cand = candidate.reshape(labels.shape[0], -1).astype(np.float64)
    target = labels.reshape(labels.shape[0], -1).astype(np.float64)
    if cand.shape != target.shape:
        raise ValueError(f"regression output has {cand.shape[1]} values per sample, the labels {target.shape[1]}")
    mae, rmse = _mae_rmse(cand, target)
    mae_ref, rmse_ref = _mae_rmse(ref, target)
    return RegressionMetrics(mae, rmse, mae_ref, rmse_ref, mae - mae_ref, rmse - rmse_ref)


def _mae_rmse(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    return float(np.mean(np.abs(pred - target))), float(np.sqrt(np.mean((pred - target) ** 2)))


def parity_summary(
    names: list[str],
    reference: list[np.ndarray],
    candidate: list[np.ndarray],
    *,
    task: str,
    labels: np.ndarray | None,
    num_classes: int | None,
) -> dict:
    """The `parity` block of a report entry: worst-case metrics over outputs, per-output details, task metrics."""
    if len(reference) != len(candidate):
        raise ValueError(f"the variant has {len(candidate)} outputs, the original model {len(reference)}")
    per_output = [output_parity(n, r, c) for n, r, c in zip(names, reference, candidate, strict=True)]
    summary: dict = {
        "max_abs_error": max(p.max_abs_error for p in per_output),
        "mean_abs_error": max(p.mean_abs_error for p in per_output),
        "max_rel_error": max(p.max_rel_error for p in per_output),
        "mean_rel_error": max(p.mean_rel_error for p in per_output),
        "cosine_min": min(p.cosine_min for p in per_output),
        "cosine_mean": min(p.cosine_mean for p in per_output),
        "snr_db": min(p.snr_db for p in per_output),
        "outputs": [asdict(p) for p in per_output],
        "samples": int(reference[0].shape[0]),
    }
    if task == "classification":
        summary.update(asdict(classification_metrics(reference[0], candidate[0], labels, num_classes)))
    elif task == "regression" and labels is not None:
        summary.update(asdict(regression_metrics(reference[0], candidate[0], labels)))
    return summary


def reference_task_metrics(reference: list[np.ndarray], *, task: str, labels: np.ndarray | None) -> dict:
    """Task metrics of the original model alone (the report's `reference` entry)."""
    if labels is None:
        return {}
    if task == "classification":
        scores = reference[0].reshape(reference[0].shape[0], -1)
        predicted = scores.argmax(axis=1)
        precision, recall, f1 = macro_scores(labels, predicted, scores.shape[1])
        out = {"accuracy": float(np.mean(predicted == labels)), "precision": precision, "recall": recall, "f1": f1}
        if scores.shape[1] > 5:
            top5 = np.argsort(-scores, axis=1, kind="stable")[:, :5]
            out["top5_accuracy"] = float(np.mean(np.any(top5 == labels[:, None], axis=1)))
        return out
    if task == "regression":
        out = reference[0].reshape(labels.shape[0], -1).astype(np.float64)
        target = labels.reshape(labels.shape[0], -1).astype(np.float64)
        mae, rmse = _mae_rmse(out, target)
        return {"mae": mae, "rmse": rmse}
    return {}
