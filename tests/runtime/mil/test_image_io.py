"""The interpreter's Core ML image feeds and classifier outputs (mobex.runtime.mil.image_io)."""

from __future__ import annotations

import numpy as np
import pytest

from mobex.errors import DataError
from mobex.preprocessing import parse_preprocessing
from mobex.runtime.mil.image_io import ImageFeed, NativeIO, _classify


def _feed() -> ImageFeed:
    contract = parse_preprocessing(
        {"kind": "image", "scale": 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    )
    a, b = contract.pixel_mapping()
    return ImageFeed("image", 3, 4, 5, "RGB", (np.array(a), np.array(b)))


def test_float_feeds_go_back_to_pixels_and_uint8_feeds_are_pixels() -> None:
    feed = _feed()
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 5)).astype(np.uint8)
    mean = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    model_space = ((pixels / 255.0 - mean) / std).astype(np.float32)
    np.testing.assert_allclose(feed.pixels(model_space), pixels, atol=1e-4)
    np.testing.assert_array_equal(feed.pixels(pixels), pixels.astype(np.float32))
    np.testing.assert_array_equal(feed.pixels(pixels.transpose(0, 2, 3, 1)), pixels.astype(np.float32))  # NHWC
    with pytest.raises(DataError, match=r"takes \(N, 3, 4, 5\) or \(N, 4, 5, 3\)"):
        feed.pixels(np.zeros((1, 3, 5, 4), np.uint8))


def test_classifier_outputs_become_scores_in_class_order() -> None:
    label, scores = _classify(
        {"probabilities": np.array([[0.1, 2.0, -1.0]]), "classes": np.array(["a", "b", "c"])}, None
    )
    assert label == "b" and list(scores) == ["a", "b", "c"]
    native = NativeIO(label_output="classLabel", scores_output="classLabel_probs")
    names = ["classLabel", "classLabel_probs"]
    values = [np.asarray(label), np.asarray(scores, dtype=object)]
    (out,) = native.results(names, values)
    np.testing.assert_allclose(out, [[0.1, 2.0, -1.0]])
    assert native.native(names, values)["classLabel"] == "b"
    with pytest.raises(DataError, match="is not the top score"):
        native.native(names, [np.asarray("a"), np.asarray(scores, dtype=object)])
