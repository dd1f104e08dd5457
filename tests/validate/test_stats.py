"""Reference statistics: which features a tensor gets, and that they are small and reproducible."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mobex.validate import stats


def test_tabular_inputs_use_feature_names() -> None:
    x = np.random.default_rng(0).normal(size=(50, 3))
    plan = stats.plan_tensor("features", "input", x, preprocessing={"feature_names": ["a", "b", "c"]})
    assert plan["layout"] == "elements"
    feats = stats.features(plan, x)
    assert [name for name, _, _ in feats] == ["a", "b", "c"]
    np.testing.assert_array_equal(feats[1][2], x[:, 1])


def test_images_get_channel_summaries_and_varying_pixels() -> None:
    x = np.zeros((40, 3, 16, 16), np.float32)
    x[:, :, 4:12, 4:12] = np.random.default_rng(0).random((40, 3, 8, 8))  # the border never varies
    plan = stats.plan_tensor("image", "input", x)
    assert plan["layout"] == "image" and plan["channels"] == 3
    assert len(plan["positions"]) == stats.MAX_POSITIONS
    for pos in plan["positions"]:
        c, h, w = np.unravel_index(pos, (3, 16, 16))
        assert 4 <= h < 12 and 4 <= w < 12
    names = [n for n, _, _ in stats.features(plan, x)]
    assert names[:6] == ["image.mean[c0]", "image.std[c0]", "image.mean[c1]", "image.std[c1]", "image.mean[c2]",
                         "image.std[c2]"]  # fmt: skip
    means = stats.features(plan, x)[0][2]
    np.testing.assert_allclose(means, x[:, 0].reshape(40, -1).mean(axis=1), rtol=1e-6)


def test_classifier_scores_give_confidence_and_class_frequencies() -> None:
    logits = np.random.default_rng(0).normal(size=(100, 5)) * 3
    plan = stats.plan_tensor("logits", "output", logits, task="classification")
    assert plan["layout"] == "scores" and plan["softmax"]
    (conf_name, _, conf), (cls_name, kind, cls) = stats.features(plan, logits)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(conf, probs.max(axis=1))
    assert kind == "categorical" and np.array_equal(cls, logits.argmax(axis=1))
    probs_plan = stats.plan_tensor("p", "output", probs, task="classification")
    assert not probs_plan["softmax"]  # already probabilities: no second softmax


def test_numeric_stats_bins_and_sample() -> None:
    v = np.arange(1000, dtype=np.float64)
    s = stats.numeric_stats(v)
    assert s["count"] == 1000 and s["min"] == 0 and s["max"] == 999
    assert len(s["histogram"]["edges"]) == stats.PSI_BINS - 1
    assert sum(s["histogram"]["counts"]) == 1000
    assert max(s["histogram"]["counts"]) - min(s["histogram"]["counts"]) <= 2  # deciles: equal-mass bins
    assert len(s["sample"]) == stats.REFERENCE_SAMPLE and set(s["sample"]) <= set(v)
    assert stats.bin_counts([-5.0, 99.9, 150.0], s["histogram"]["edges"])[:2] == [2, 1]  # (-inf, 99.9], (99.9, ..]
    assert stats.bin_counts([2000.0], s["histogram"]["edges"])[-1] == 1


def test_asset_is_small_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    inputs = {"image": rng.random((360, 1, 8, 8)).astype(np.float32)}
    outputs = [rng.normal(size=(360, 10)).astype(np.float32)]

    def make() -> bytes:
        asset = stats.reference_statistics(inputs, outputs, ["logits"], task="classification")
        return json.dumps(asset, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    first = make()
    assert first == make()
    assert len(first) < 32_000
    names = [f["name"] for f in json.loads(first)["features"]]
    assert names[-2:] == ["logits.top1_score", "logits.predicted_class"]


def test_features_refuse_a_different_shape() -> None:
    plan = stats.plan_tensor("x", "input", np.zeros((4, 100)))
    with pytest.raises(ValueError, match=r"sample shape \[99\], expected \[100\]"):
        stats.features(plan, np.zeros((4, 99)))
