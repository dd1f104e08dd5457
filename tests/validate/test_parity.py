"""Parity metrics on arrays whose answers are known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mobex.validate.parity import SNR_CAP_DB, classification_metrics, macro_f1, output_parity, parity_summary


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
    ref = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
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
