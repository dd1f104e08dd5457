"""Detection metrics: the variant's detections against the original's (and against labels when given).

Both models' raw outputs (per-anchor scores and boxes) are turned into detections the same way
(`decode`): optional score activation, per class the anchors scoring at least the threshold, greedy
non-maximum suppression, at most `max_detections` per sample. Then:
- `map50_agreement`: mAP@0.5 of the variant's detections with the original's as ground truth (VOC-style
  all-point interpolated AP per class, averaged over the classes the original detects);
- matched boxes (`match`, greedy by the variant's score, IoU >= 0.5, same class): their mean and minimum
  IoU, the mean and largest score difference, and which fraction of either side's detections matched;
- with labels (`labels` array [N, M, 5]: class, then the box in the recipe's box format; rows with a
  negative class are padding): mAP@0.5 of both models against them, and the drop.
All pure numpy; boxes are compared as (x1, y1, x2, y2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MATCH_IOU = 0.5  # the IoU of mAP@0.5, and of a matched box


@dataclass(frozen=True)
class DecodeOptions:
    """How raw outputs become detections (the recipe's [detection] table)."""

    box_format: str = "xyxy"  # xyxy | cxcywh | xywh
    score_threshold: float = 0.5
    iou_threshold: float = 0.5
    max_detections: int = 100
    score_activation: str = "none"  # none | sigmoid | softmax
    background_class: int | None = None


@dataclass(frozen=True)
class Detections:
    """One sample's detections, best first: boxes [K, 4] (xyxy), scores [K], classes [K]."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def to_xyxy(boxes: np.ndarray, box_format: str) -> np.ndarray:
    """Boxes [..., 4] in `box_format` as (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2 (a negative width or height,
    as an untrained head gives, becomes the same box the other way round)."""
    b = np.asarray(boxes, dtype=np.float64)
    if box_format == "cxcywh":
        half = b[..., 2:] / 2
        b = np.concatenate([b[..., :2] - half, b[..., :2] + half], axis=-1)
    elif box_format == "xywh":
        b = np.concatenate([b[..., :2], b[..., :2] + b[..., 2:]], axis=-1)
    elif box_format != "xyxy":
        raise ValueError(f"unknown box format {box_format!r}; use xyxy, cxcywh or xywh")
    lo, hi = np.minimum(b[..., :2], b[..., 2:]), np.maximum(b[..., :2], b[..., 2:])
    return np.concatenate([lo, hi], axis=-1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a [K, 4] with every box in b [L, 4] (xyxy) -> [K, L]. Boxes without area overlap
    nothing, except an identical box (IoU 1): the same point is the same detection."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    same = np.all(a[:, None, :] == b[None, :, :], axis=2)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), np.where(same, 1.0, 0.0))


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int | None = None) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first (ties: the lower index first), at most
    `limit` of them. Each kept box is compared with the boxes still left only (no K x K matrix)."""
    order = np.argsort(-scores, kind="stable")
    if iou_threshold >= 1.0 or order.size <= 1:
        return order[:limit]
    keep: list[int] = []
    rest = order
    while rest.size and (limit is None or len(keep) < limit):
        keep.append(int(rest[0]))
        others = rest[1:]
        rest = others[iou_matrix(boxes[rest[0]][None], boxes[others])[0] <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def activated(scores: np.ndarray, activation: str) -> np.ndarray:
    """Scores [N, A, C] after the recipe's activation."""
    s = np.asarray(scores, dtype=np.float64)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-s))
    if activation == "softmax":
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    return s


def decode(scores: np.ndarray, boxes: np.ndarray, options: DecodeOptions) -> list[Detections]:
    """Per sample, the detections in raw outputs: scores [N, A] or [N, A, C], boxes [N, A, 4]."""
    s = np.asarray(scores)
    if s.ndim == 2:
        s = s[..., None]
    b = to_xyxy(np.asarray(boxes).reshape(s.shape[0], -1, 4), options.box_format)
    if s.ndim != 3 or b.shape[1] != s.shape[1]:
        raise ValueError(
            f"scores of shape {list(np.shape(scores))} and boxes of shape {list(np.shape(boxes))} do not pair up: "
            "expected scores [batch, anchors] or [batch, anchors, classes] and boxes [batch, anchors, 4]"
        )
    s = activated(s, options.score_activation)
    out = []
    for sample_scores, sample_boxes in zip(s, b, strict=True):
        found_boxes, found_scores, found_classes = [], [], []
        for c in range(sample_scores.shape[1]):
            if c == options.background_class:
                continue
            hit = np.flatnonzero(sample_scores[:, c] >= options.score_threshold)
            if hit.size == 0:
                continue
            keep = hit[nms(sample_boxes[hit], sample_scores[hit, c], options.iou_threshold, options.max_detections)]
            found_boxes.append(sample_boxes[keep])
            found_scores.append(sample_scores[keep, c])
            found_classes.append(np.full(keep.size, c, dtype=np.int64))
        out.append(_best_first(found_boxes, found_scores, found_classes, options.max_detections))
    return out


def _best_first(boxes: list, scores: list, classes: list, limit: int) -> Detections:
    if not scores:
        return Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
    all_scores = np.concatenate(scores)
    order = np.argsort(-all_scores, kind="stable")[:limit]
    return Detections(np.concatenate(boxes)[order], all_scores[order], np.concatenate(classes)[order])


def labels_to_detections(labels: np.ndarray, box_format: str) -> list[Detections]:
    """Ground truth from a labels array [N, M, 5] (class, box; rows with a negative class are padding)."""
    out = []
    for rows in np.asarray(labels, dtype=np.float64):
        rows = rows[rows[:, 0] >= 0]
        boxes = to_xyxy(rows[:, 1:5], box_format)
        out.append(Detections(boxes, np.ones(rows.shape[0]), rows[:, 0].astype(np.int64)))
    return out


def match(pred: Detections, truth: Detections, iou: float = MATCH_IOU) -> list[tuple[int, int, float]]:
    """(pred index, truth index, IoU) pairs: each prediction, best score first, takes the unmatched truth box
    of its class it overlaps most, if that IoU is at least `iou`."""
    if len(pred) == 0 or len(truth) == 0:
        return []
    ious = iou_matrix(pred.boxes, truth.boxes)
    ious = np.where(pred.classes[:, None] == truth.classes[None, :], ious, -1.0)
    taken = np.zeros(len(truth), dtype=bool)
    pairs = []
    for i in np.argsort(-pred.scores, kind="stable"):
        row = np.where(taken, -1.0, ious[i])
        j = int(row.argmax())
        if row[j] >= iou:
            taken[j] = True
            pairs.append((int(i), j, float(row[j])))
    return pairs


def average_precision(preds: list[Detections], truths: list[Detections], iou: float = MATCH_IOU) -> float | None:
    """mAP at `iou` over the split: per class with any truth box, VOC all-point interpolated AP; None when
    there is no truth box at all (nothing to find: the metric cannot tell good from bad)."""
    classes = sorted({int(c) for t in truths for c in t.classes})
    if not classes:
        return None
    aps = []
    for c in classes:
        total = sum(int(np.sum(t.classes == c)) for t in truths)
        scored: list[tuple[float, bool]] = []
        for p, t in zip(preds, truths, strict=True):
            keep_p, keep_t = p.classes == c, t.classes == c
            sub_p = Detections(p.boxes[keep_p], p.scores[keep_p], p.classes[keep_p])
            sub_t = Detections(t.boxes[keep_t], t.scores[keep_t], t.classes[keep_t])
            hits = {i for i, _, _ in match(sub_p, sub_t, iou)}
            scored += [(float(score), i in hits) for i, score in enumerate(sub_p.scores)]
        aps.append(_ap(scored, total))
    return float(np.mean(aps))


def _ap(scored: list[tuple[float, bool]], total: int) -> float:
    if not scored:
        return 0.0
    scored.sort(key=lambda x: -x[0])
    tp = np.cumsum([hit for _, hit in scored], dtype=np.float64)
    fp = np.cumsum([not hit for _, hit in scored], dtype=np.float64)
    recall = np.concatenate([[0.0], tp / total, [1.0]])
    precision = np.concatenate([[1.0], tp / (tp + fp), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the precision envelope
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def detection_agreement(
    reference: list[Detections], candidate: list[Detections], truth: list[Detections] | None = None
) -> dict:
    """The variant's detections against the original's (and both against `truth`): see the module docstring.

    Metrics that cannot be computed are None (no original detection: nothing to agree on; no matched box).
    """
    pairs = [match(c, r) for c, r in zip(candidate, reference, strict=True)]
    ious = [iou for sample in pairs for _, _, iou in sample]
    errors = [
        abs(float(c.scores[i]) - float(r.scores[j]))
        for sample, c, r in zip(pairs, candidate, reference, strict=True)
        for i, j, _ in sample
    ]
    n_ref, n_cand = sum(len(r) for r in reference), sum(len(c) for c in candidate)
    out: dict = {
        "map50_agreement": average_precision(candidate, reference),
        "matched_iou_mean": float(np.mean(ious)) if ious else None,
        "matched_iou_min": float(np.min(ious)) if ious else None,
        "score_error_mean": float(np.mean(errors)) if errors else None,
        "score_error_max": float(np.max(errors)) if errors else None,
        "matched_recall": len(ious) / n_ref if n_ref else None,
        "matched_precision": len(ious) / n_cand if n_cand else None,
        "detections_reference": n_ref,
        "detections": n_cand,
    }
    if truth is not None:
        ours, theirs = average_precision(candidate, truth), average_precision(reference, truth)
        out.update(
            {
                "map50": ours,
                "map50_reference": theirs,
                "map50_drop": None if ours is None or theirs is None else theirs - ours,
            }
        )
    return out
