"""Detection metrics for Core ML's Vision layout and NMS pipeline (mobex.converters.coreml_detection).

A Vision-layout variant returns `confidence` [boxes, classes] (probabilities, background left out) and
`coordinates` [boxes, 4] (normalized cx, cy, w, h) instead of the recipe's scores and boxes. The comparison
happens in that form, the one the app sees: the original model's outputs are put in the Vision layout here,
in numpy (the recipe's score_activation, the background column dropped, the boxes from box_format to
normalized centre/size), independently of the torch module the conversion appends, and the labels the same
way (classes renumbered without the background, boxes normalized). Then
- tensor parity compares confidence with the original's probabilities (not logits: fp16 rounds a sigmoid
  near 1 to 1, whose logit is infinite) and coordinates with its normalized boxes;
- the detection metrics (mobex.metrics.detection) decode both with the recipe's thresholds, per class.
For an NMS pipeline, tensor parity is that of the ML program stage, and the detection metrics compare the
pipeline's own detections (its NonMaximumSuppression stage, run by mobex.runtime.mil.detection_io) with the
original's outputs passed through the same numpy NMS with the package's NMS parameters: one label per box
(the argmax), per class or not as the spec says. `program_detections` keeps the per-class decoding of the
program stage's outputs as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mobex.metrics import tasks
from mobex.metrics.detection import (
    DecodeOptions,
    Detections,
    activated,
    detection_agreement,
    labels_to_detections,
    to_xyxy,
)
from mobex.runtime.mil.detection_io import (
    CONFIDENCE,
    COORDINATES,
    NMS_CONFIDENCE,
    NMS_COORDINATES,
    non_maximum_suppression,
    padded,
)

_DETECTION_KEYS = (
    "map50_agreement", "matched_iou_mean", "matched_iou_min", "score_error_mean", "score_error_max", "matched_recall",
    "matched_precision", "detections_reference", "detections", "map50", "map50_reference", "map50_drop",
)  # fmt: skip


def _cxcywh(xyxy: np.ndarray) -> np.ndarray:
    return np.concatenate([(xyxy[..., :2] + xyxy[..., 2:]) / 2, xyxy[..., 2:] - xyxy[..., :2]], axis=-1)


@dataclass(frozen=True)
class VisionDetectionView:
    """How to compare a Vision-layout Core ML variant with the original (module docstring).

    layout: the package's `mobex.detection` record; nms: its NMS stage's parameters (NmsSpec.record) or None."""

    layout: dict
    nms: dict | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (CONFIDENCE, COORDINATES) + ((NMS_CONFIDENCE, NMS_COORDINATES) if self.nms is not None else ())

    def _size(self) -> np.ndarray:
        if self.layout.get("box_units", "pixels") == "normalized":
            return np.ones(4)
        w, h = float(self.layout["width"]), float(self.layout["height"])
        return np.array([w, h, w, h])

    def vision_outputs(self, scores: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The recipe's scores [N, A(, C)] and boxes [N, A, 4] in the Vision layout: [N, A, C'], [N, A, 4]."""
        s = np.asarray(scores, dtype=np.float64)
        s = s[..., None] if s.ndim == 2 else s
        s = activated(s, self.layout["score_activation"])
        background = self.layout.get("background_class")
        if background is not None:
            s = np.delete(s, background, axis=-1)
        b = _cxcywh(_oriented_xyxy(np.asarray(boxes, dtype=np.float64), self.layout["box_format"])) / self._size()
        return s.astype(np.float32), b.astype(np.float32)

    def vision_labels(self, labels: np.ndarray | None) -> np.ndarray | None:
        """Labels [N, M, 5] (class, box in the recipe's format and units) as Vision-layout classes and boxes."""
        if labels is None:
            return None
        lab = np.asarray(labels, dtype=np.float64).copy()
        cls = lab[..., 0]
        background = self.layout.get("background_class")
        if background is not None:
            cls = np.where(cls == background, -1, np.where(cls > background, cls - 1, cls))
        boxes = _cxcywh(to_xyxy(lab[..., 1:5], self.layout["box_format"])) / self._size()
        return np.concatenate([cls[..., None], boxes], axis=-1)

    def reference_nms(self, conf: np.ndarray, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The original's Vision-layout outputs through the pipeline's NMS, padded like the variant's."""
        assert self.nms is not None
        length = self.nms["max_boxes"] or conf.shape[1]
        rows = [
            non_maximum_suppression(
                c, b, iou_threshold=self.nms["iou_threshold"], confidence_threshold=self.nms["confidence_threshold"],
                per_class=self.nms["per_class"], max_boxes=self.nms["max_boxes"],
            )
            for c, b in zip(conf, coords, strict=True)
        ]  # fmt: skip
        return (
            np.concatenate([padded(c, length) for c, _ in rows]),
            np.concatenate([padded(b, length) for _, b in rows]),
        )

    def evaluate(
        self, spec: tasks.TaskSpec, reference: list[np.ndarray], candidate: list[np.ndarray], labels: Any
    ) -> tasks.Evaluation:
        """Parity and detection metrics of the variant's outputs (in `self.names` order) against the original's
        (in the recipe's order, `spec`)."""
        assert spec.detection is not None
        si, bi, options = spec.detection
        conf, coords = self.vision_outputs(reference[si], reference[bi])
        decoding = DecodeOptions(
            "cxcywh", options.score_threshold, options.iou_threshold, options.max_detections, "none", None
        )
        vspec = tasks.TaskSpec("detection", (CONFIDENCE, COORDINATES), detection=(0, 1, decoding))
        vlabels = self.vision_labels(labels)
        program = tasks.evaluate(vspec, [conf, coords], candidate[:2], vlabels)
        parity, reasons = dict(program.parity), dict(program.not_applicable)
        parity["detection_layout"] = "vision"
        if self.nms is None:
            return tasks.Evaluation(parity, reasons)
        ref_rows = self.reference_nms(conf, coords)
        truth = labels_to_detections(vlabels, "cxcywh") if vlabels is not None else None
        metrics = detection_agreement(_rows(*ref_rows), _rows(candidate[2], candidate[3]), truth)
        parity["program_detections"] = {k: parity.pop(k) for k in _DETECTION_KEYS if k in parity}
        parity.update(metrics)
        parity["nms"] = {
            **self.nms,
            "reference": "the original's outputs in the Vision layout through the same NMS (numpy, "
            "mobex.runtime.mil.detection_io), the variant's through the pipeline in the MIL interpreter",
        }
        for key in ("map50_agreement", "matched_iou_mean", "score_error_mean", "map50_drop"):
            reasons.pop(key, None)
        if metrics["detections_reference"] == 0:
            why = "the original's outputs keep no box through the pipeline's NMS: there is nothing to agree on"
            reasons.update({"map50_agreement": why, "matched_iou_mean": why, "score_error_mean": why})
        elif metrics["matched_iou_mean"] is None:
            why = "no detection of the pipeline matches one of the original's (IoU >= 0.5, same class)"
            reasons.update({"matched_iou_mean": why, "score_error_mean": why})
        if truth is not None and metrics.get("map50_drop") is None:
            reasons["map50_drop"] = "the labels hold no box"
        return tasks.Evaluation(parity, reasons)


def _oriented_xyxy(boxes: np.ndarray, box_format: str) -> np.ndarray:
    """Boxes as (x1, y1, x2, y2) without reordering corners (a negative size stays negative, as in the model)."""
    if box_format == "cxcywh":
        half = boxes[..., 2:] / 2
        return np.concatenate([boxes[..., :2] - half, boxes[..., :2] + half], axis=-1)
    if box_format == "xywh":
        return np.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], axis=-1)
    return boxes


def _rows(confidence: np.ndarray, coordinates: np.ndarray) -> list[Detections]:
    """Per sample, NMS output rows as detections: label = argmax, score = its confidence; all-zero rows are
    Core ML's padding."""
    out = []
    for conf, coords in zip(np.asarray(confidence, np.float64), np.asarray(coordinates, np.float64), strict=True):
        real = conf.max(axis=1) > 0
        conf, coords = conf[real], coords[real]
        out.append(Detections(to_xyxy(coords, "cxcywh"), conf.max(axis=1), conf.argmax(axis=1).astype(np.int64)))
    return out
