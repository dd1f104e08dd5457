"""Segmentation metrics: the variant's class map against the original's (and against label masks when given).

Each model's output (per-pixel class scores, [N, C, H, W] or channels last) becomes a class map by argmax
over the class axis, or, for a one-channel output, `score > threshold` (foreground 1, background 0).
- `pixel_agreement`: the fraction of pixels where the variant's class is the original's;
- `miou_agreement`: mean IoU of the variant's class map with the original's as ground truth, over the
  classes either map contains;
- with labels ([N, H, W] integer masks; `ignore_index` pixels left out): pixel accuracy and mIoU of both
  models, and the drop.
Pure numpy, one confusion matrix per comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SegmentationOptions:
    """The recipe's [segmentation] table (its output by index)."""

    class_axis: int = 1
    threshold: float = 0.0
    ignore_index: int | None = None


def class_map(scores: np.ndarray, class_axis: int = 1, threshold: float = 0.0) -> np.ndarray:
    """[N, H, W] class indices from per-pixel scores (argmax over `class_axis`; one channel: score > threshold)."""
    s = np.asarray(scores)
    axis = class_axis % s.ndim
    if s.shape[axis] == 1:
        return (np.squeeze(s, axis=axis) > threshold).astype(np.int64)
    return np.argmax(s, axis=axis).astype(np.int64)


def confusion(truth: np.ndarray, predicted: np.ndarray, ignore_index: int | None = None) -> np.ndarray:
    """Confusion matrix [classes, classes] (rows: truth) over every pixel not marked `ignore_index`."""
    t = np.asarray(truth, dtype=np.int64).reshape(-1)
    p = np.asarray(predicted, dtype=np.int64).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"label masks hold {t.size} pixels, the output's class map {p.size}")
    keep = t != ignore_index if ignore_index is not None else np.ones_like(t, dtype=bool)
    t, p = t[keep], p[keep]
    classes = int(max(t.max(initial=0), p.max(initial=0))) + 1
    return np.bincount(t * classes + p, minlength=classes * classes).reshape(classes, classes)


def mean_iou(matrix: np.ndarray) -> float | None:
    """Mean IoU over the classes present in the truth or the prediction; None when there are no pixels."""
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - tp
    present = union > 0
    return float(np.mean(tp[present] / union[present])) if present.any() else None


def pixel_accuracy(matrix: np.ndarray) -> float | None:
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else None


def segmentation_agreement(
    reference: np.ndarray, candidate: np.ndarray, options: SegmentationOptions, labels: np.ndarray | None = None
) -> dict:
    """Pixel agreement and mIoU of the variant's class map against the original's (and both against labels)."""
    ref = class_map(reference, options.class_axis, options.threshold)
    cand = class_map(candidate, options.class_axis, options.threshold)
    agreement = confusion(ref, cand)
    out: dict = {
        "pixel_agreement": pixel_accuracy(agreement),
        "miou_agreement": mean_iou(agreement),
        "classes_reference": int(np.unique(ref).size),
    }
    if labels is not None:
        truth = np.asarray(labels).reshape(ref.shape)
        ours = confusion(truth, cand, options.ignore_index)
        theirs = confusion(truth, ref, options.ignore_index)
        miou, miou_ref = mean_iou(ours), mean_iou(theirs)
        out.update(
            {
                "pixel_accuracy": pixel_accuracy(ours),
                "pixel_accuracy_reference": pixel_accuracy(theirs),
                "miou": miou,
                "miou_reference": miou_ref,
                "miou_drop": None if miou is None or miou_ref is None else miou_ref - miou,
            }
        )
    return out


def reference_segmentation(reference: np.ndarray, options: SegmentationOptions, labels: np.ndarray) -> dict:
    """The original's pixel accuracy and mIoU against label masks (the report's `reference` metrics)."""
    ref = class_map(reference, options.class_axis, options.threshold)
    matrix = confusion(np.asarray(labels).reshape(ref.shape), ref, options.ignore_index)
    return {"pixel_accuracy": pixel_accuracy(matrix), "miou": mean_iou(matrix)}
