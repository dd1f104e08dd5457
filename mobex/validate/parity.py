"""Output parity between the original model and an exported variant, and task metrics.

All metrics are computed over the whole validation split. Outputs are compared per output tensor;
the variant's headline numbers are the worst over its outputs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# SNR of identical outputs is infinite; JSON has no infinity, so it is reported as this cap.
SNR_CAP_DB = 300.0


@dataclass
class OutputParity:
    name: str
    max_abs_error: float
    mean_abs_error: float
    max_rel_error: float
    cosine_min: float
    cosine_mean: float
    snr_db: float


@dataclass
class ClassificationMetrics:
    top1_agreement: float
    top5_agreement: float | None
    accuracy: float | None
    accuracy_reference: float | None
    accuracy_drop: float | None
    f1: float | None
    f1_reference: float | None


@dataclass
class RegressionMetrics:
    mae: float
    rmse: float
    mae_reference: float
    rmse_reference: float


def output_parity(name: str, reference: np.ndarray, candidate: np.ndarray) -> OutputParity:
    """Error metrics of one output; arrays are (num_samples, ...)."""
    ref = reference.astype(np.float64).reshape(reference.shape[0], -1)
    cand = candidate.astype(np.float64).reshape(candidate.shape[0], -1)
    if ref.shape != cand.shape:
        raise ValueError(f"output {name!r}: reference shape {reference.shape} != variant shape {candidate.shape}")
    diff = np.abs(ref - cand)
    scale = np.maximum(np.abs(ref), 1e-6)
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
        max_rel_error=_finite((diff / scale).max()),
        cosine_min=_finite(cosine.min()),
        cosine_mean=_finite(cosine.mean()),
        snr_db=snr,
    )


def _finite(value: float) -> float:
    """NaN/inf errors (a broken variant) become a huge finite number so JSON and gates stay valid."""
    value = float(value)
    return value if math.isfinite(value) else 1e30


def classification_metrics(
    reference_scores: np.ndarray, candidate_scores: np.ndarray, labels: np.ndarray | None, num_classes: int | None
) -> ClassificationMetrics:
    """Top-k agreement with the original model, and accuracy/F1 against labels when there are labels."""
    ref = reference_scores.reshape(reference_scores.shape[0], -1)
    cand = candidate_scores.reshape(candidate_scores.shape[0], -1)
    ref_top1 = ref.argmax(axis=1)
    cand_top1 = cand.argmax(axis=1)
    top1 = float(np.mean(ref_top1 == cand_top1))
    top5 = None
    if ref.shape[1] > 5:
        cand_top5 = np.argsort(-cand, axis=1)[:, :5]
        top5 = float(np.mean(np.any(cand_top5 == ref_top1[:, None], axis=1)))
    if labels is None:
        return ClassificationMetrics(top1, top5, None, None, None, None, None)
    classes = num_classes or ref.shape[1]
    acc = float(np.mean(cand_top1 == labels))
    acc_ref = float(np.mean(ref_top1 == labels))
    return ClassificationMetrics(
        top1_agreement=top1,
        top5_agreement=top5,
        accuracy=acc,
        accuracy_reference=acc_ref,
        accuracy_drop=acc_ref - acc,
        f1=macro_f1(labels, cand_top1, classes),
        f1_reference=macro_f1(labels, ref_top1, classes),
    )


def macro_f1(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Macro-averaged F1 over the classes present in labels or predictions."""
    scores = []
    for c in range(num_classes):
        tp = int(np.sum((predicted == c) & (labels == c)))
        fp = int(np.sum((predicted == c) & (labels != c)))
        fn = int(np.sum((predicted != c) & (labels == c)))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def regression_metrics(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> RegressionMetrics:
    ref = reference.reshape(labels.shape[0], -1).astype(np.float64)
    cand = candidate.reshape(labels.shape[0], -1).astype(np.float64)
    target = labels.reshape(labels.shape[0], -1).astype(np.float64)
    return RegressionMetrics(
        mae=float(np.mean(np.abs(cand - target))),
        rmse=float(np.sqrt(np.mean((cand - target) ** 2))),
        mae_reference=float(np.mean(np.abs(ref - target))),
        rmse_reference=float(np.sqrt(np.mean((ref - target) ** 2))),
    )


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
        return {
            "accuracy": float(np.mean(predicted == labels)),
            "f1": macro_f1(labels, predicted, scores.shape[1]),
        }
    if task == "regression":
        out = reference[0].reshape(labels.shape[0], -1).astype(np.float64)
        target = labels.reshape(labels.shape[0], -1).astype(np.float64)
        return {"mae": float(np.mean(np.abs(out - target))), "rmse": float(np.sqrt(np.mean((out - target) ** 2)))}
    return {}
