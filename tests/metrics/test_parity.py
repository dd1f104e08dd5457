"""Parity metrics on arrays whose answers are known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mobex.metrics.parity import SNR_CAP_DB, classification_metrics, macro_f1, output_parity, parity_summary


def test_identical_outputs() -> None:
    ref = np.random.default_rng(0).normal(size=(20, 10)).astype(np.float32)
    p = output_parity("y", ref, ref.copy())
    assert p.max_abs_error == 0 and p.mean_abs_error == 0
    assert p.cosine_min == pytest.approx(1.0)
    assert p.snr_db == SNR_CAP_DB


def test_known_error_and_snr() -> None:
    ref = np.ones((4, 5), np.float32)
    cand = ref + 0.1
    p = output_parity("y", ref, cand)
    assert p.max_abs_error == pytest.approx(0.1, rel=1e-5)
    assert p.mean_abs_error == pytest.approx(0.1, rel=1e-5)
    assert p.snr_db == pytest.approx(10 * math.log10(1 / 0.01), rel=1e-4)  # 20 dB
    assert p.cosine_min == pytest.approx(1.0)  # same direction


def test_cosine_catches_sign_flip_and_nan() -> None:
    ref = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 4.0, 5.0, 6.0, 7.0]], np.float32)
    cand = ref.copy()
    cand[1] *= -1
    assert output_parity("y", ref, cand).cosine_min == pytest.approx(-1.0)
    cand[0, 0] = np.nan
    broken = output_parity("y", ref, cand)
    assert broken.max_abs_error >= 1e29 and broken.snr_db == -SNR_CAP_DB


def test_classification_metrics() -> None:
    ref = np.eye(7, dtype=np.float32)[[0, 1, 2, 3, 4, 5, 6, 0]]
    cand = ref.copy()
    cand[7] = [-1.0, 0.1, 0.2, 1.0, 0.3, 0.4, 0.5]  # top-1 flips to 3; class 0 falls out of the top 5
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 1])  # reference wrong on the last sample
    m = classification_metrics(ref, cand, labels, 7)
    assert m.top1_agreement == pytest.approx(7 / 8)
    assert m.accuracy_reference == pytest.approx(7 / 8)
    assert m.accuracy == pytest.approx(7 / 8)
    assert m.accuracy_drop == pytest.approx(0.0)
    assert m.top5_agreement == pytest.approx(7 / 8)


def test_macro_f1_matches_definition() -> None:
    labels = np.array([0, 0, 1, 1])
    predicted = np.array([0, 1, 1, 1])
    # class 0: tp1 fp0 fn1 -> 2/3; class 1: tp2 fp1 fn0 -> 4/5
    assert macro_f1(labels, predicted, 2) == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_summary_requires_same_output_count() -> None:
    with pytest.raises(ValueError, match="1 outputs, the original model 2"):
        parity_summary(
            ["a", "b"], [np.zeros((1, 2))] * 2, [np.zeros((1, 2))], task="other", labels=None, num_classes=None
        )


def test_macro_precision_recall_f1_match_scikit_learn() -> None:
    from sklearn import metrics

    from mobex.metrics.parity import macro_scores

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 6, size=300)
    predicted = np.where(rng.random(300) < 0.7, labels, rng.integers(0, 7, size=300))  # class 6 never in labels
    seen = sorted(set(labels) | set(predicted))
    p, r, f = macro_scores(labels, predicted, 6)
    assert p == pytest.approx(metrics.precision_score(labels, predicted, labels=seen, average="macro", zero_division=0))
    assert r == pytest.approx(metrics.recall_score(labels, predicted, labels=seen, average="macro", zero_division=0))
    assert f == pytest.approx(metrics.f1_score(labels, predicted, labels=seen, average="macro", zero_division=0))


def test_classification_drops_with_labels() -> None:
    ref = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1, 2, 3]]
    cand = ref.copy()
    cand[[1, 2]] = np.eye(4, dtype=np.float32)[[0, 0]]  # two samples now predicted as class 0
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    m = classification_metrics(ref, cand, labels, 4)
    assert m.accuracy_reference == 1.0 and m.accuracy == pytest.approx(6 / 8)
    assert m.accuracy_drop == pytest.approx(2 / 8)
    assert m.f1_reference == 1.0 and m.f1_drop == pytest.approx(1.0 - m.f1) and m.f1 < 1
    assert m.recall == pytest.approx((1 + 0.5 + 0.5 + 1) / 4)
    assert m.precision == pytest.approx((2 / 4 + 1 + 1 + 1) / 4)


def test_regression_metrics_against_labels() -> None:
    from mobex.metrics.parity import regression_metrics

    labels = np.array([1.0, 2.0, 3.0, 4.0])
    ref = labels + np.array([0.1, -0.1, 0.1, -0.1])
    cand = labels + np.array([0.3, -0.3, 0.3, -0.3])
    m = regression_metrics(ref[:, None], cand[:, None], labels)
    assert m.mae == pytest.approx(0.3) and m.rmse == pytest.approx(0.3)
    assert m.mae_reference == pytest.approx(0.1) and m.mae_increase == pytest.approx(0.2)
    s = parity_summary(["y"], [ref[:, None]], [cand[:, None]], task="regression", labels=labels, num_classes=None)
    assert s["rmse_increase"] == pytest.approx(0.2)


def test_relative_error_is_floored_near_zero_reference_values() -> None:
    ref = np.array([[10.0, -10.0, 1e-9, 5.0]])
    cand = ref + np.array([[0.1, 0.0, 1e-4, 0.0]])
    p = output_parity("y", ref, cand)
    rms = np.sqrt(np.mean(ref**2))
    assert p.max_rel_error == pytest.approx(1e-4 / (1e-3 * rms))  # not 1e-4 / 1e-9 = 1e5
    assert p.mean_rel_error == pytest.approx((0.01 + 1e-4 / (1e-3 * rms)) / 4)


def test_error_histogram_counts_every_value_once() -> None:
    from mobex.metrics.parity import ERROR_HISTOGRAM_EDGES, error_histogram

    errors = np.array([0.0, 5e-9, 1e-8, 3e-3, 0.5, 2.0, 1e3, np.nan])
    h = error_histogram(errors)
    assert h["edges"] == list(ERROR_HISTOGRAM_EDGES) and sum(h["counts"]) == errors.size
    assert h["zeros"] == 1
    assert h["counts"][0] == 2  # 0 and 5e-9 are below 1e-8
    assert h["counts"][1] == 1  # 1e-8 starts the [1e-8, 1e-7) bin
    assert h["counts"][-1] == 2  # 1e3 and NaN (a broken output) land above 100
