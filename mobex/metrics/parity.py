"""Output parity between the original model and an exported variant, and task metrics.

All metrics are computed over the whole validation split. Outputs are compared per output tensor;
the variant's headline numbers are the worst over its outputs. Relative errors divide by
|reference|, floored at 0.1% of the output's RMS, so reference values that happen to be ~0 do not
turn a tiny absolute error into an enormous relative one. Every output also carries a histogram of
its absolute errors on fixed decade bins (the same bins for every variant, so the report can plot
them side by side).

Outputs of a few values per sample (at most SMALL_OUTPUT_VALUES: a probability, a box, a pitch) get no
cosine: the cosine of one value is its sign, and of a few offset values (box corners in pixels) it stays
near 1 however far off they are. They are judged on their error over the output's range on the split
(`range_error_max`, `range_error_mean`) instead, which every output also reports.
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
# An output with at most this many values per sample gets no cosine (see the module docstring).
SMALL_OUTPUT_VALUES = 4


@dataclass
class OutputParity:
    name: str
    max_abs_error: float
    mean_abs_error: float
    max_rel_error: float
    mean_rel_error: float
    cosine_min: float | None  # None: too few values per sample for a cosine to mean anything
    cosine_mean: float | None
    snr_db: float
    abs_error_histogram: dict
    range_error_max: float = 0.0  # |variant - original| / (max - min of the original output over the split)
    range_error_mean: float = 0.0
    value_range: tuple[float, float] = (0.0, 0.0)  # min and max of the original output over the split
    values_per_sample: int = 0

    @property
    def small(self) -> bool:
        """Too few values per sample for a cosine: judged on its range errors."""
        return self.values_per_sample <= SMALL_OUTPUT_VALUES


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
    binary_threshold: float | None = None  # one-value scores: the class is score > this


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
    lo, hi = (float(ref.min()), float(ref.max())) if ref.size else (0.0, 0.0)
    span = max(hi - lo, REL_FLOOR * rms, 1e-12)  # a constant output: its RMS sets the scale
    small = ref.shape[1] <= SMALL_OUTPUT_VALUES
    return OutputParity(
        name=name,
        max_abs_error=_finite(diff.max()),
        mean_abs_error=_finite(diff.mean()),
        max_rel_error=_finite(rel.max()),
        mean_rel_error=_finite(rel.mean()),
        cosine_min=None if small else _finite(cosine.min()),
        cosine_mean=None if small else _finite(cosine.mean()),
        snr_db=snr,
        abs_error_histogram=error_histogram(diff),
        range_error_max=_finite(diff.max() / span),
        range_error_mean=_finite(diff.mean() / span),
        value_range=(lo, hi),
        values_per_sample=int(ref.shape[1]),
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
    """Top-k agreement with the original model; accuracy, precision, recall and F1 against labels if any.

    A one-value score is a binary classifier: both models' classes are `score > binary_threshold(reference)`
    (the argmax of one value is always 0, and would agree whatever the variant computed).
    """
    ref = reference_scores.reshape(reference_scores.shape[0], -1)
    cand = candidate_scores.reshape(candidate_scores.shape[0], -1)
    threshold = binary_threshold(ref) if ref.shape[1] == 1 else None
    ref_top1, cand_top1 = predicted_classes(ref, threshold), predicted_classes(cand, threshold)
    top1 = float(np.mean(ref_top1 == cand_top1))
    top5 = None
    if ref.shape[1] > 5:
        cand_top5 = np.argsort(-cand, axis=1, kind="stable")[:, :5]
        top5 = float(np.mean(np.any(cand_top5 == ref_top1[:, None], axis=1)))
    if labels is None:
        return ClassificationMetrics(top1, top5, binary_threshold=threshold)
    classes = num_classes or max(ref.shape[1], 2)
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
        binary_threshold=threshold,
    )


def binary_threshold(reference_scores: np.ndarray) -> float:
    """The decision threshold of a one-value classifier score: 0.5 for probabilities (every value of the
    original's output in [0, 1]), else 0 (a logit)."""
    return 0.5 if float(reference_scores.min()) >= 0.0 and float(reference_scores.max()) <= 1.0 else 0.0


def predicted_classes(scores: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class index per sample: the argmax, or for a one-value score (threshold given) `score > threshold`."""
    scores = scores.reshape(scores.shape[0], -1)
    if threshold is not None and scores.shape[1] == 1:
        return (scores[:, 0] > threshold).astype(np.int64)
    return scores.argmax(axis=1)


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


def tensor_parity(
    names: list[str], reference: list[np.ndarray], candidate: list[np.ndarray], judged_by_task: tuple[int, ...] = ()
) -> dict:
    """Tensor parity of every output, and the headline numbers: the worst over the outputs.

    The headline cosine is over the outputs that have one (None when none has); the headline range errors are
    over the small outputs (`OutputParity.small`) except those in `judged_by_task` (a classifier's class
    scores, judged on agreement), None when there is none. `not_meaningful` says why a headline is None.
    """
    if len(reference) != len(candidate):
        raise ValueError(f"the variant has {len(candidate)} outputs, the original model {len(reference)}")
    per_output = [output_parity(n, r, c) for n, r, c in zip(names, reference, candidate, strict=True)]
    cosines = [p for p in per_output if p.cosine_min is not None]
    ranged = [p for i, p in enumerate(per_output) if p.small and i not in judged_by_task]
    summary: dict = {
        "max_abs_error": max(p.max_abs_error for p in per_output),
        "mean_abs_error": max(p.mean_abs_error for p in per_output),
        "max_rel_error": max(p.max_rel_error for p in per_output),
        "mean_rel_error": max(p.mean_rel_error for p in per_output),
        "cosine_min": min(p.cosine_min for p in cosines) if cosines else None,
        "cosine_mean": min(p.cosine_mean for p in cosines) if cosines else None,
        "snr_db": min(p.snr_db for p in per_output),
        "range_error_max": max(p.range_error_max for p in ranged) if ranged else None,
        "range_error_mean": max(p.range_error_mean for p in ranged) if ranged else None,
        "outputs": [asdict(p) for p in per_output],
        "samples": int(reference[0].shape[0]),
    }
    return summary


def not_meaningful(summary: dict) -> dict[str, str]:
    """Headline tensor metrics of `tensor_parity` that are None by design, each with the reason (for the gates)."""
    outputs = summary["outputs"]
    small = ", ".join(f"{o['name']} ({o['values_per_sample']})" for o in outputs if o["cosine_min"] is None)
    reasons = {}
    if summary["cosine_min"] is None:
        why = f"every output has at most {SMALL_OUTPUT_VALUES} values per sample ({small}): a cosine of so few "
        reasons["cosine_min"] = why + "values cannot tell good from bad; range errors judge them"
        reasons["cosine_mean"] = reasons["cosine_min"]
    if summary["range_error_max"] is None:
        why = f"no output of at most {SMALL_OUTPUT_VALUES} values per sample outside the task's own metrics"
        reasons["range_error_max"] = reasons["range_error_mean"] = why
    return reasons


def parity_summary(
    names: list[str],
    reference: list[np.ndarray],
    candidate: list[np.ndarray],
    *,
    task: str,
    labels: np.ndarray | None,
    num_classes: int | None,
    class_output: int = 0,
) -> dict:
    """Tensor parity plus classification or regression metrics (output `class_output` / the first output).

    The quantizers' searches measure candidates with it; validation uses mobex.metrics.tasks, which adds the
    other tasks' metrics.
    """
    judged = (class_output,) if task == "classification" else ()
    summary = tensor_parity(names, reference, candidate, judged)
    if task == "classification":
        scores = classification_metrics(reference[class_output], candidate[class_output], labels, num_classes)
        summary.update(asdict(scores))
    elif task == "regression" and labels is not None:
        summary.update(asdict(regression_metrics(reference[0], candidate[0], labels)))
    return summary


def reference_task_metrics(
    reference: list[np.ndarray], *, task: str, labels: np.ndarray | None, class_output: int = 0
) -> dict:
    """Task metrics of the original model alone (the report's `reference` entry)."""
    if labels is None:
        return {}
    if task == "classification":
        scores = reference[class_output].reshape(reference[class_output].shape[0], -1)
        predicted = predicted_classes(scores, binary_threshold(scores) if scores.shape[1] == 1 else None)
        precision, recall, f1 = macro_scores(labels, predicted, max(scores.shape[1], 2))
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
