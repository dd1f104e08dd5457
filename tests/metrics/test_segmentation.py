"""Segmentation metrics on class maps whose answers are known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from mobex.metrics.segmentation import (
    SegmentationOptions,
    class_map,
    confusion,
    mean_iou,
    reference_segmentation,
    segmentation_agreement,
)


def _scores(classes: np.ndarray, count: int = 3) -> np.ndarray:
    """One-hot scores [N, C, H, W] of a class map [N, H, W]."""
    return np.moveaxis(np.eye(count, dtype=np.float32)[classes], -1, 1)


def test_class_map_channels_first_last_and_binary() -> None:
    classes = np.array([[[0, 1], [2, 1]]])
    assert class_map(_scores(classes)).tolist() == classes.tolist()
    assert class_map(np.moveaxis(_scores(classes), 1, -1), class_axis=-1).tolist() == classes.tolist()
    logits = np.array([[[[-1.0, 2.0], [0.5, -0.2]]]])  # one channel: foreground above the threshold
    assert class_map(logits).tolist() == [[[0, 1], [1, 0]]]
    assert class_map(logits, threshold=1.0).tolist() == [[[0, 1], [0, 0]]]


def test_mean_iou_over_the_classes_present() -> None:
    truth = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 2])
    # class 0: 1/2, class 1: 2/3, class 2: 1
    assert mean_iou(confusion(truth, pred)) == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    ignored = confusion(np.array([0, 255, 1]), np.array([0, 1, 0]), ignore_index=255)
    assert ignored.sum() == 2 and mean_iou(ignored) == pytest.approx((0.5 + 0.0) / 2)


def test_agreement_and_drops_against_labels() -> None:
    original = np.array([[[0, 1, 1, 2]]])
    variant = np.array([[[0, 1, 2, 2]]])  # one of four pixels changed class
    labels = np.array([[[0, 1, 1, 1]]])
    m = segmentation_agreement(_scores(original), _scores(variant), SegmentationOptions(), labels)
    assert m["pixel_agreement"] == pytest.approx(0.75)
    assert m["miou_agreement"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert m["pixel_accuracy_reference"] == pytest.approx(0.75) and m["pixel_accuracy"] == pytest.approx(0.5)
    assert m["miou_drop"] == pytest.approx(m["miou_reference"] - m["miou"]) and m["miou_drop"] > 0
    ref = reference_segmentation(_scores(original), SegmentationOptions(), labels)
    assert ref == {"pixel_accuracy": m["pixel_accuracy_reference"], "miou": m["miou_reference"]}
