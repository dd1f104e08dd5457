"""Detection metrics on boxes whose answers are known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from mobex.metrics.detection import (
    DecodeOptions,
    Detections,
    average_precision,
    decode,
    detection_agreement,
    iou_matrix,
    labels_to_detections,
    match,
    nms,
    to_xyxy,
)


def _dets(boxes: list, scores: list, classes: list | None = None) -> Detections:
    classes = classes if classes is not None else [0] * len(scores)
    return Detections(np.asarray(boxes, float).reshape(-1, 4), np.asarray(scores, float), np.asarray(classes))


def test_box_formats_and_iou() -> None:
    assert to_xyxy(np.array([5.0, 5.0, 4.0, 2.0]), "cxcywh").tolist() == [3.0, 4.0, 7.0, 6.0]
    assert to_xyxy(np.array([1.0, 2.0, 3.0, 4.0]), "xywh").tolist() == [1.0, 2.0, 4.0, 6.0]
    ious = iou_matrix(np.array([[0, 0, 2, 2]]), np.array([[1, 0, 3, 2], [0, 0, 2, 2], [5, 5, 6, 6], [3, 3, 3, 3]]))
    assert ious[0].tolist() == pytest.approx([1 / 3, 1.0, 0.0, 0.0])  # a degenerate box overlaps nothing...
    assert iou_matrix(np.array([[3, 3, 3, 3]]), np.array([[3, 3, 3, 3]]))[0, 0] == 1.0  # ...but itself
    # an untrained head's negative width: the same box the other way round
    assert to_xyxy(np.array([5.0, 5.0, -4.0, 2.0]), "cxcywh").tolist() == [3.0, 4.0, 7.0, 6.0]


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], float)
    keep = nms(boxes, np.array([0.6, 0.9, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [1, 2]  # box 0 overlaps the better box 1 at IoU 0.81
    assert nms(boxes, np.array([0.6, 0.9, 0.7]), iou_threshold=1.0).tolist() == [1, 2, 0]


def test_decode_thresholds_activates_and_skips_the_background() -> None:
    logits = np.array([[[3.0, -3.0], [-3.0, 2.0], [0.0, 0.0]]])  # 3 anchors, 2 classes; class 0 = background
    boxes = np.array([[[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5]]], float)
    options = DecodeOptions(score_threshold=0.6, score_activation="softmax", background_class=0)
    (found,) = decode(logits, boxes, options)
    assert found.classes.tolist() == [1] and found.boxes.tolist() == [[2, 2, 3, 3]]
    assert found.scores[0] == pytest.approx(np.exp(2) / (np.exp(2) + np.exp(-3)))
    with pytest.raises(ValueError, match="do not pair up"):
        decode(np.zeros((1, 3)), np.zeros((1, 5, 4)), DecodeOptions())


def test_match_is_greedy_by_score_and_per_class() -> None:
    truth = _dets([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], [0, 1])
    pred = _dets([[0, 0, 10, 9], [0, 0, 10, 10], [20, 20, 30, 30]], [0.5, 0.9, 0.8], [0, 0, 0])
    pairs = match(pred, truth)
    assert pairs == [(1, 0, 1.0)]  # the better-scored exact box takes truth 0; class 0 never matches class 1


def test_average_precision_of_a_perfect_a_partial_and_an_empty_answer() -> None:
    truth = [_dets([[0, 0, 10, 10]], [1]), _dets([[5, 5, 9, 9], [20, 20, 30, 30]], [1, 1])]
    assert average_precision(truth, truth) == pytest.approx(1.0)
    half = [_dets([[0, 0, 10, 10]], [0.9]), _dets([[50, 50, 60, 60]], [0.8])]  # one hit, one false positive
    # precision 1 at recall 1/3, then no more hits: AP = 1/3
    assert average_precision(half, truth) == pytest.approx(1 / 3)
    empty = [_dets([], []), _dets([], [])]
    assert average_precision(empty, truth) == 0.0
    assert average_precision(truth, empty) is None  # nothing to find: cannot tell good from bad


def test_agreement_of_a_shifted_variant_and_against_labels() -> None:
    original = [_dets([[0, 0, 10, 10]], [0.9]), _dets([[20, 20, 30, 30]], [0.8])]
    shifted = [_dets([[1, 0, 11, 10]], [0.85]), _dets([[20, 20, 30, 30]], [0.8])]
    labels = np.array([[[0, 5, 5, 10, 10], [-1, 0, 0, 0, 0]], [[0, 25, 25, 10, 10], [-1, 0, 0, 0, 0]]], float)
    truth = labels_to_detections(labels, "cxcywh")
    m = detection_agreement(original, shifted, truth)
    assert m["map50_agreement"] == pytest.approx(1.0)
    assert m["matched_iou_mean"] == pytest.approx((90 / 110 + 1.0) / 2)
    assert m["matched_iou_min"] == pytest.approx(90 / 110)
    assert m["score_error_mean"] == pytest.approx(0.025) and m["score_error_max"] == pytest.approx(0.05)
    assert m["matched_recall"] == 1.0 and m["matched_precision"] == 1.0
    assert m["map50"] == pytest.approx(1.0) and m["map50_reference"] == pytest.approx(1.0) and m["map50_drop"] == 0


def test_agreement_without_original_detections_is_none() -> None:
    nothing = [_dets([], [])]
    m = detection_agreement(nothing, [_dets([[0, 0, 1, 1]], [0.9])])
    assert m["map50_agreement"] is None and m["matched_iou_mean"] is None and m["detections"] == 1
