"""Embedding metrics: does the variant keep the original's neighbourhoods?

Per-sample cosine of the embedding output is its tensor parity (`cosine_min`, `cosine_mean`). Retrieval
recall@k asks what an app searching by embedding sees: for every sample, its k nearest other samples
(cosine similarity) in the original's embeddings and in the variant's; recall@k is the mean fraction of the
original's k neighbours the variant also returns. A random embedding scores k / (n - 1) on average, so with
fewer than 2k other samples the metric cannot tell good from bad, and it is not computed.
"""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    flat = np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.where(norms > 0, norms, 1.0)


def nearest(embeddings: np.ndarray, k: int) -> np.ndarray:
    """[n, k] indices of each sample's k most similar other samples (cosine), most similar first."""
    unit = _unit(embeddings)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def recall_at_k(reference: np.ndarray, candidate: np.ndarray, k: int) -> float | None:
    """Mean overlap of the variant's k nearest neighbours with the original's; None with fewer than 2k others."""
    n = reference.shape[0]
    if n - 1 < 2 * k:
        return None
    ours, theirs = nearest(candidate, k), nearest(reference, k)
    overlap = [len(set(a) & set(b)) / k for a, b in zip(ours.tolist(), theirs.tolist(), strict=True)]
    return float(np.mean(overlap))


def embedding_agreement(reference: np.ndarray, candidate: np.ndarray, k: int) -> dict:
    """recall@k of the variant's embeddings against the original's, with k and the chance level."""
    n = reference.shape[0]
    return {
        "recall_at_k": recall_at_k(reference, candidate, k),
        "recall_k": k,
        "recall_chance": round(k / (n - 1), 6) if n > 1 else None,
    }
