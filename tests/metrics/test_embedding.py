"""Retrieval recall@k: neighbourhoods kept, lost, and too few samples to tell."""

from __future__ import annotations

import numpy as np
import pytest

from mobex.metrics.embedding import embedding_agreement, nearest, recall_at_k


def test_nearest_excludes_the_sample_itself() -> None:
    points = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert nearest(points, 1).ravel().tolist() == [1, 0, 3, 2]


def test_recall_is_one_for_a_rescaled_copy_and_near_chance_for_noise() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 16))
    assert recall_at_k(ref, 3.0 * ref, 5) == 1.0  # cosine ignores length
    noise = rng.normal(size=(200, 16))
    assert recall_at_k(ref, noise, 5) < 0.1  # chance is 5 / 199
    slight = ref + 0.05 * rng.normal(size=ref.shape)
    assert 0.7 < recall_at_k(ref, slight, 5) < 1.0


def test_too_few_samples_cannot_tell() -> None:
    ref = np.eye(8)
    assert recall_at_k(ref, ref, 5) is None  # 7 others < 2k: random neighbours would score 5/7
    m = embedding_agreement(ref, ref, 3)
    assert m["recall_at_k"] == 1.0 and m["recall_k"] == 3 and m["recall_chance"] == pytest.approx(3 / 7, abs=1e-6)
