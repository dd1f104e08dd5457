"""Core ML detection models in the reference interpreter: Vision's layout and the NonMaximumSuppression stage.

A package converted with the Vision layout (mobex.converters.coreml_detection) records it in its
`mobex.detection` metadata; its ML program returns `confidence` [boxes, classes] and `coordinates`
[boxes, 4]. A pipeline package (ML program, then a `nonMaximumSuppression` model) is run here stage by
stage: the ML program in the MIL interpreter, then `non_maximum_suppression`, numpy written from the
NonMaximumSuppression spec (coremltools' NonMaximumSuppression.proto), with the parameters read from the
NMS model in the package (not from mobex's metadata):
- a box's label is the argmax of its confidences, its score that confidence; boxes scoring below
  `confidenceThreshold` are dropped first;
- PickTop: by descending score, keep a box and drop every later one whose IoU with it exceeds
  `iouThreshold` (1.0 drops none), among boxes of the same label when `perClass`, else among all;
- at most the confidence output's upper bound of rows (its shape range), best first;
- kept rows carry their whole confidence vector and their coordinates, as the inputs had them.
The spec leaves some things open: whether the threshold applies to the top confidence or to their sum
(here: the top one, which is the same for one class), and the order of boxes with equal scores (here: the
lower index first). Core ML's own NMS (and Vision) cannot run on Linux: this is mobex's reading of the spec.

`run` returns arrays with a sample axis, as the validator batches them: the program's `confidence` and
`coordinates` as [1, boxes, ...], and for a pipeline also the NMS stage's, zero-padded to [1, max boxes, ...]
(Core ML's own padding for a fixed output shape), under `nms_confidence` / `nms_coordinates`.
`run_native` gives what Core ML returns: the pipeline's `confidence` [K, classes] and `coordinates` [K, 4].
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from mobex.artifacts import TensorSpec
from mobex.errors import DataError

METADATA_KEY = "mobex.detection"  # written by mobex.converters.coreml_detection
CONFIDENCE, COORDINATES = "confidence", "coordinates"
NMS_CONFIDENCE, NMS_COORDINATES = "nms_confidence", "nms_coordinates"


@dataclass(frozen=True)
class NmsSpec:
    """A NonMaximumSuppression model's parameters, as the package's spec holds them."""

    iou_threshold: float
    confidence_threshold: float
    per_class: bool
    max_boxes: int | None  # the output shape range's upper bound; None: unbounded
    confidence_input: str
    coordinates_input: str
    confidence_output: str
    coordinates_output: str
    iou_input: str = ""
    confidence_threshold_input: str = ""
    labels: tuple[str, ...] = ()

    @classmethod
    def read(cls, model: Any) -> NmsSpec:
        nms = model.nonMaximumSuppression
        if nms.WhichOneof("SuppressionMethod") != "pickTop":
            raise DataError(f"NonMaximumSuppression method {nms.WhichOneof('SuppressionMethod')!r} is not PickTop")
        upper = None
        for feature in model.description.output:
            ranges = feature.type.multiArrayType.shapeRange.sizeRanges
            shape = feature.type.multiArrayType.shape
            bound = int(ranges[0].upperBound) if ranges else (int(shape[0]) if shape else -1)
            if bound >= 0:
                upper = bound if upper is None else min(upper, bound)
        kind = nms.WhichOneof("ClassLabels")
        labels = tuple(str(v) for v in getattr(nms, kind).vector) if kind else ()
        return cls(
            float(nms.iouThreshold), float(nms.confidenceThreshold), bool(nms.pickTop.perClass), upper,
            nms.confidenceInputFeatureName, nms.coordinatesInputFeatureName, nms.confidenceOutputFeatureName,
            nms.coordinatesOutputFeatureName, nms.iouThresholdInputFeatureName,
            nms.confidenceThresholdInputFeatureName, labels,
        )  # fmt: skip

    def record(self) -> dict:
        return {
            "iou_threshold": self.iou_threshold,
            "confidence_threshold": self.confidence_threshold,
            "per_class": self.per_class,
            "max_boxes": self.max_boxes,
        }


def _iou_cxcywh(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    a = np.concatenate([box[:2] - box[2:] / 2, box[:2] + box[2:] / 2])
    b = np.concatenate([others[:, :2] - others[:, 2:] / 2, others[:, :2] + others[:, 2:] / 2], axis=1)
    lo, hi = np.maximum(a[:2], b[:, :2]), np.minimum(a[2:], b[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area_a = np.prod(np.clip(a[2:] - a[:2], 0, None))
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def non_maximum_suppression(
    confidence: np.ndarray,
    coordinates: np.ndarray,
    *,
    iou_threshold: float,
    confidence_threshold: float,
    per_class: bool,
    max_boxes: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The kept rows of `confidence` [A, C] and `coordinates` [A, 4] (cx, cy, w, h), best first (module docstring)."""
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1, np.shape(confidence)[-1])
    coords = np.asarray(coordinates, dtype=np.float64).reshape(-1, 4)
    if conf.shape[0] != coords.shape[0]:
        raise DataError(f"NMS: {conf.shape[0]} confidence rows for {coords.shape[0]} coordinate rows")
    label = conf.argmax(axis=1) if conf.shape[1] else np.zeros(conf.shape[0], np.int64)
    score = conf.max(axis=1) if conf.shape[1] else np.zeros(conf.shape[0])
    order = np.flatnonzero(score >= confidence_threshold)
    order = order[np.argsort(-score[order], kind="stable")]
    keep: list[int] = []
    while order.size and (max_boxes is None or len(keep) < max_boxes):
        best, rest = int(order[0]), order[1:]
        keep.append(best)
        if iou_threshold >= 1.0 or not rest.size:
            order = rest
            continue
        suppress = _iou_cxcywh(coords[best], coords[rest]) > iou_threshold
        if per_class:
            suppress &= label[rest] == label[best]
        order = rest[~suppress]
    idx = np.asarray(keep, dtype=np.int64)
    return conf[idx].astype(np.float32), coords[idx].astype(np.float32)


def padded(rows: np.ndarray, length: int) -> np.ndarray:
    """[K, W] rows as [1, length, W], zero rows after them (K <= length)."""
    out = np.zeros((1, length, rows.shape[1]), dtype=np.float32)
    out[0, : rows.shape[0]] = rows
    return out


@dataclass
class DetectionIO:
    """The Vision layout of a package (its `mobex.detection` record) and its NMS stage, if a pipeline."""

    layout: dict
    nms: NmsSpec | None = None

    @classmethod
    def read(cls, root_spec: Any, program_spec: Any) -> DetectionIO | None:
        raw = root_spec.description.metadata.userDefined.get(METADATA_KEY) or (
            program_spec.description.metadata.userDefined.get(METADATA_KEY)
        )
        nms = None
        if root_spec.WhichOneof("Type") == "pipeline":
            stages = list(root_spec.pipeline.models)
            if len(stages) != 2 or stages[1].WhichOneof("Type") != "nonMaximumSuppression":
                kinds = [m.WhichOneof("Type") for m in stages]
                raise DataError(f"pipeline of {kinds}: the interpreter runs [mlProgram, nonMaximumSuppression] only")
            nms = NmsSpec.read(stages[1])
            names = [o.name for o in program_spec.description.output]
            if [nms.confidence_input, nms.coordinates_input] != names:
                raise DataError(
                    f"the NMS stage reads {nms.confidence_input!r}, {nms.coordinates_input!r}; "
                    f"the program gives {names}"
                )
        if raw is None and nms is None:
            return None
        if nms is None and [o.name for o in program_spec.description.output] != [CONFIDENCE, COORDINATES]:
            return None  # a copy of the program with more outputs (gptq's probe): plain outputs
        return cls(json.loads(raw) if raw else {}, nms)

    @property
    def max_boxes(self) -> int:
        assert self.nms is not None
        anchors = self.layout.get("anchors")
        return self.nms.max_boxes if self.nms.max_boxes is not None else int(anchors or 0)

    def outputs(self, outputs: list[TensorSpec]) -> list[TensorSpec]:
        out = [TensorSpec(name=s.name, shape=(1, *s.shape), dtype=s.dtype) for s in outputs]
        if self.nms is not None:
            classes = outputs[0].shape[-1]
            out += [
                TensorSpec(name=NMS_CONFIDENCE, shape=(1, self.max_boxes, classes), dtype="float32"),
                TensorSpec(name=NMS_COORDINATES, shape=(1, self.max_boxes, 4), dtype="float32"),
            ]
        return out

    def stage(self, values: list[Any], feed: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The NMS stage on the program's outputs; the feed may override the thresholds (the optional inputs)."""
        assert self.nms is not None
        n = self.nms
        iou = float(np.asarray(feed.get(n.iou_input, n.iou_threshold))) if n.iou_input else n.iou_threshold
        conf = n.confidence_threshold
        if n.confidence_threshold_input:
            conf = float(np.asarray(feed.get(n.confidence_threshold_input, conf)))
        return non_maximum_suppression(
            values[0], values[1], iou_threshold=iou, confidence_threshold=conf, per_class=n.per_class,
            max_boxes=n.max_boxes,
        )  # fmt: skip

    def results(self, values: list[Any], feed: dict[str, Any]) -> list[np.ndarray]:
        out = [np.asarray(v)[None] for v in values]
        if self.nms is not None:
            conf, coords = self.stage(values, feed)
            length = self.nms.max_boxes if self.nms.max_boxes is not None else int(np.shape(values[0])[0])
            out += [padded(conf, length), padded(coords, length)]
        return out

    def native(self, names: list[str], values: list[Any], feed: dict[str, Any]) -> dict[str, Any]:
        if self.nms is None:
            return dict(zip(names, values, strict=True))
        conf, coords = self.stage(values, feed)
        return {self.nms.confidence_output: conf, self.nms.coordinates_output: coords}
