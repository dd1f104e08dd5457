"""Task-aware validation: which metrics judge a variant, by the recipe's `task`, as a registry.

Every variant gets tensor parity on every output (mobex.metrics.parity). Its task then adds the metrics
an app would notice, computed on the outputs the recipe names:
- classification: agreement and accuracy on the class scores (`[model].class_output`, else the only output);
- regression: MAE/RMSE of the first output against the labels;
- detection: the variant's detections against the original's (mobex.metrics.detection);
- segmentation: pixel agreement and mIoU (mobex.metrics.segmentation);
- embedding: retrieval recall@k (mobex.metrics.embedding).
A metric that cannot tell good from bad here (no original detection to agree with, too few samples for
recall@k, a cosine of one value) is None and comes with the reason in `Evaluation.not_applicable`, so a
default gate on it is not applied and the report says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mobex.metrics.detection import DecodeOptions, decode, detection_agreement, labels_to_detections
from mobex.metrics.embedding import embedding_agreement
from mobex.metrics.parity import (
    classification_metrics,
    not_meaningful,
    reference_task_metrics,
    regression_metrics,
    tensor_parity,
)
from mobex.metrics.segmentation import SegmentationOptions, reference_segmentation, segmentation_agreement

Labels = np.ndarray | None


@dataclass(frozen=True)
class TaskSpec:
    """What the task metrics read: the task, the output names, which outputs the task's metrics use (by
    index) and their options. Made from the recipe once (`of`); picklable."""

    task: str
    output_names: tuple[str, ...]
    num_classes: int | None = None
    class_output: int = 0
    detection: tuple[int, int, DecodeOptions] | None = None  # scores index, boxes index, decoding
    segmentation: tuple[int, SegmentationOptions] | None = None
    embedding: tuple[int, int] | None = None  # output index, k of recall@k

    @classmethod
    def of(cls, recipe: Any, output_names: list[str]) -> TaskSpec:
        names = list(output_names)

        def index(name: str | None) -> int:
            return names.index(name) if name is not None else 0

        labels = recipe.labels()
        m = recipe.model
        spec = cls(m.task, tuple(names), len(labels) if labels else None, index(m.class_output))
        if recipe.detection is not None:
            d = recipe.detection
            decoding = DecodeOptions(
                d.box_format, d.score_threshold, d.iou_threshold, d.max_detections, d.score_activation,
                d.background_class,
            )  # fmt: skip
            spec = _replace(spec, detection=(index(d.scores), index(d.boxes), decoding))
        if m.task == "segmentation":
            s = recipe.segmentation
            options = SegmentationOptions(s.class_axis, s.threshold, s.ignore_index) if s else SegmentationOptions()
            spec = _replace(spec, segmentation=(index(s.output if s else None), options))
        if m.task == "embedding":
            e = recipe.embedding
            spec = _replace(spec, embedding=(index(e.output if e else None), e.k if e else 5))
        return spec


def _replace(spec: TaskSpec, **changes: Any) -> TaskSpec:
    from dataclasses import replace

    return replace(spec, **changes)


@dataclass(frozen=True)
class TaskResult:
    """A task's metrics, and why each None among them cannot be measured here."""

    metrics: dict
    not_applicable: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskMetrics:
    """One task: `compare` (variant against original, and labels), `reference` (the original against labels),
    `judged` (the outputs its own metrics judge: no range-error gate on them)."""

    compare: Callable[[TaskSpec, list[np.ndarray], list[np.ndarray], Labels], TaskResult]
    reference: Callable[[TaskSpec, list[np.ndarray], Labels], dict]
    judged: Callable[[TaskSpec], tuple[int, ...]] = lambda spec: ()


_TASKS: dict[str, TaskMetrics] = {}


def register_task(name: str, metrics: TaskMetrics) -> None:
    if name in _TASKS:
        raise ValueError(f"task {name!r} is registered twice")
    _TASKS[name] = metrics


@dataclass(frozen=True)
class Evaluation:
    """A variant's `parity` block and the metrics in it that cannot tell good from bad here, with why."""

    parity: dict
    not_applicable: dict[str, str]


def evaluate(spec: TaskSpec, reference: list[np.ndarray], candidate: list[np.ndarray], labels: Labels) -> Evaluation:
    """Tensor parity of every output plus the task's metrics (see the module docstring)."""
    task = _TASKS.get(spec.task)
    judged = task.judged(spec) if task else ()
    parity = tensor_parity(list(spec.output_names), reference, candidate, judged)
    reasons = not_meaningful(parity)
    if task is not None:
        result = task.compare(spec, reference, candidate, labels)
        parity.update(result.metrics)
        reasons.update(result.not_applicable)
    return Evaluation(parity, reasons)


def reference_metrics(spec: TaskSpec, reference: list[np.ndarray], labels: Labels) -> dict:
    """The original model's task metrics against the labels (empty without labels or for tasks without them)."""
    task = _TASKS.get(spec.task)
    return task.reference(spec, reference, labels) if task is not None and labels is not None else {}


# --------------------------------------------------------------------------- the built-in tasks


def _classification(spec: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray], labels: Labels) -> TaskResult:
    i = spec.class_output
    metrics = asdict(classification_metrics(ref[i], cand[i], labels, spec.num_classes))
    return TaskResult({"class_output": spec.output_names[i], **metrics})


def _regression(spec: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray], labels: Labels) -> TaskResult:
    return TaskResult(asdict(regression_metrics(ref[0], cand[0], labels)) if labels is not None else {})


def _detections(spec: TaskSpec, outputs: list[np.ndarray]) -> list:
    assert spec.detection is not None
    scores, boxes, options = spec.detection
    return decode(outputs[scores], outputs[boxes], options)


def _detection(spec: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray], labels: Labels) -> TaskResult:
    assert spec.detection is not None
    options = spec.detection[2]
    truth = labels_to_detections(labels, options.box_format) if labels is not None else None
    metrics = detection_agreement(_detections(spec, ref), _detections(spec, cand), truth)
    reasons = {}
    if metrics["detections_reference"] == 0:
        why = (
            f"the original model detects nothing at score_threshold {options.score_threshold:g} on the validation "
            "data: there is nothing to agree on (lower [detection].score_threshold, or use data with objects)"
        )
        reasons.update({"map50_agreement": why, "matched_iou_mean": why, "score_error_mean": why})
    elif metrics["matched_iou_mean"] is None:
        why = "no detection of the variant matches one of the original's (IoU >= 0.5, same class)"
        reasons.update({"matched_iou_mean": why, "score_error_mean": why})  # map50_agreement = 0 judges it
    if truth is not None and metrics.get("map50_drop") is None:
        reasons["map50_drop"] = "the labels hold no box"
    return TaskResult({"scores_output": spec.output_names[spec.detection[0]],
                       "boxes_output": spec.output_names[spec.detection[1]], **metrics}, reasons)  # fmt: skip


def _detection_reference(spec: TaskSpec, ref: list[np.ndarray], labels: Labels) -> dict:
    from mobex.metrics.detection import average_precision

    assert spec.detection is not None and labels is not None
    return {
        "map50": average_precision(_detections(spec, ref), labels_to_detections(labels, spec.detection[2].box_format))
    }


def _segmentation(spec: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray], labels: Labels) -> TaskResult:
    assert spec.segmentation is not None
    index, options = spec.segmentation
    metrics = segmentation_agreement(ref[index], cand[index], options, labels)
    return TaskResult({"segmentation_output": spec.output_names[index], **metrics})


def _segmentation_reference(spec: TaskSpec, ref: list[np.ndarray], labels: Labels) -> dict:
    assert spec.segmentation is not None and labels is not None
    index, options = spec.segmentation
    return reference_segmentation(ref[index], options, labels)


def _embedding(spec: TaskSpec, ref: list[np.ndarray], cand: list[np.ndarray], labels: Labels) -> TaskResult:
    assert spec.embedding is not None
    index, k = spec.embedding
    metrics = embedding_agreement(ref[index], cand[index], k)
    reasons = {}
    if metrics["recall_at_k"] is None:
        n = ref[index].shape[0]
        reasons["recall_at_k"] = (
            f"{n} validation samples: fewer than 2k + 1 = {2 * k + 1}, so a random embedding would score "
            f"{k}/{n - 1} or more (lower [embedding].k or add samples)"
        )
    return TaskResult({"embedding_output": spec.output_names[index], **metrics}, reasons)


def _labelled(task: str) -> Callable[[TaskSpec, list[np.ndarray], Labels], dict]:
    return lambda spec, ref, labels: reference_task_metrics(
        ref, task=task, labels=labels, class_output=spec.class_output
    )


register_task("classification", TaskMetrics(_classification, _labelled("classification"), lambda s: (s.class_output,)))
register_task("regression", TaskMetrics(_regression, _labelled("regression")))
register_task(
    "detection",
    TaskMetrics(_detection, _detection_reference, lambda s: (s.detection[0], s.detection[1]) if s.detection else ()),
)
register_task(
    "segmentation",
    TaskMetrics(_segmentation, _segmentation_reference, lambda s: (s.segmentation[0],) if s.segmentation else ()),
)
register_task("embedding", TaskMetrics(_embedding, lambda spec, ref, labels: {}))
