"""Data for the coverage zoo: real data that scikit-learn ships wherever it fits, synthetic signals only for audio.

Every function takes `(split, n)` and returns `n` samples (arrays keyed by input name, sample axis first,
plus `labels` for trained classifiers and regressors). `split` is "train" or "val": the two never
overlap. Nothing is downloaded: scikit-learn's bundled datasets and their text descriptions only.
"""

from __future__ import annotations

from functools import cache

import numpy as np

SEED = 0


@cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def _split(count: int, split: str, n: int) -> np.ndarray:
    """Sample indices: a fixed permutation, the last 300 for validation, the rest for training."""
    order = np.random.default_rng(SEED).permutation(count)
    pool = order[-300:] if split == "val" else order[:-300]
    if n > len(pool):
        pool = np.resize(pool, n)
    return pool[:n]


def digits(split: str, n: int, size: int = 8, channels: int = 1, name: str = "image") -> dict[str, np.ndarray]:
    """scikit-learn's 8x8 digits (1797 images, 10 classes), upscaled by pixel repetition to `size`."""
    images, labels = _digits()
    idx = _split(len(images), split, n)
    x = images[idx]
    if size != 8:
        x = np.kron(x, np.ones((size // 8, size // 8), np.float32))
    x = np.repeat(x[:, None], channels, axis=1)
    return {name: np.ascontiguousarray(x, np.float32), "labels": labels[idx]}


def digit_rows(split: str, n: int, name: str = "x") -> dict[str, np.ndarray]:
    """Digits as sequences: 8 time steps (rows) of 8 features, batch first (time-major models transpose)."""
    out = digits(split, n)
    x = out.pop("image")[:, 0]
    return {name: x, **out}


def digit_canvas(split: str, n: int, height: int, width: int, name: str = "image") -> dict[str, np.ndarray]:
    """Detection-style scenes: 1-3 digits (upscaled 4x) pasted on a dark canvas, 3 channels."""
    images, _ = _digits()
    rng = np.random.default_rng(SEED + (0 if split == "train" else 1))
    idx = _split(len(images), split, 3 * n)
    x = np.zeros((n, 3, height, width), np.float32)
    for i in range(n):
        for k in range(1 + i % 3):
            digit = np.kron(images[idx[3 * i + k]], np.ones((4, 4), np.float32))
            top, left = rng.integers(0, height - 32), rng.integers(0, width - 32)
            x[i, :, top : top + 32, left : left + 32] = np.maximum(x[i, :, top : top + 32, left : left + 32], digit)
    return {name: x}


def _tabular(loader: str, split: str, n: int, name: str) -> dict[str, np.ndarray]:
    import sklearn.datasets

    d = getattr(sklearn.datasets, loader)()
    x = d.data.astype(np.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)  # standardised on the whole set: the model sees unit scale
    idx = _split_small(len(x), split, n)
    y = d.target[idx]
    labels = y.astype(np.float32)[:, None] if loader == "load_diabetes" else y.astype(np.int64)
    if loader == "load_diabetes":
        labels = (labels - d.target.mean()) / d.target.std()
    return {name: x[idx], "labels": labels.astype(np.float32) if loader == "load_diabetes" else labels}


def _split_small(count: int, split: str, n: int) -> np.ndarray:
    """Small tables (iris: 150 rows): a fixed permutation, the last fifth for validation."""
    order = np.random.default_rng(SEED).permutation(count)
    cut = count - count // 5
    pool = order[cut:] if split == "val" else order[:cut]
    return np.resize(pool, n) if n > len(pool) else pool[:n]


def iris(split: str, n: int) -> dict[str, np.ndarray]:
    return _tabular("load_iris", split, n, "features")


def wine(split: str, n: int) -> dict[str, np.ndarray]:
    return _tabular("load_wine", split, n, "features")


def breast_cancer(split: str, n: int) -> dict[str, np.ndarray]:
    return _tabular("load_breast_cancer", split, n, "features")


def diabetes(split: str, n: int) -> dict[str, np.ndarray]:
    return _tabular("load_diabetes", split, n, "features")


@cache
def _text_bytes() -> np.ndarray:
    """Real English text that scikit-learn ships: its datasets' descriptions, as ASCII bytes."""
    import sklearn.datasets as ds

    text = " ".join(
        getattr(ds, f)().DESCR for f in ("load_iris", "load_wine", "load_breast_cancer", "load_diabetes", "load_digits")
    )
    return np.frombuffer(text.encode("ascii", "replace"), np.uint8).astype(np.int64)


def text_ids(split: str, n: int, seq: int, vocab: int, with_mask: bool = True, bool_mask: bool = False
             ) -> dict[str, np.ndarray]:  # fmt: skip
    """Windows of byte ids of that text (ids folded into `vocab`), with a padding mask that varies."""
    data = _text_bytes()
    half = len(data) // 2
    start = 0 if split == "train" else half
    rng = np.random.default_rng(SEED + (split == "val"))
    offsets = start + rng.integers(0, half - seq, n)
    ids = np.stack([data[o : o + seq] for o in offsets]) % vocab
    out = {"input_ids": ids.astype(np.int64)}
    if with_mask:
        mask = np.ones((n, seq), np.int64)
        for i in range(n):
            mask[i, seq - (i % (seq // 4 + 1)) :] = 0  # 0 .. seq/4 padded positions at the end
        ids[mask == 0] = 0
        out["input_ids"] = ids.astype(np.int64)
        out["attention_mask"] = mask.astype(bool) if bool_mask else mask
    return out


def audio(split: str, n: int, samples: int, name: str = "audio") -> dict[str, np.ndarray]:
    """SYNTHETIC audio (no real recordings ship in the installed packages): chirps, harmonic tones with
    vibrato and noise bursts at 16 kHz, each with a random level."""
    rng = np.random.default_rng(SEED + (split == "val"))
    t = np.arange(samples, dtype=np.float64) / 16000.0
    out = np.zeros((n, samples), np.float32)
    for i in range(n):
        kind = i % 3
        if kind == 0:
            f0, f1 = rng.uniform(100, 400), rng.uniform(800, 3000)
            sig = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1])))
        elif kind == 1:
            f0 = rng.uniform(80, 400) * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))
            phase = 2 * np.pi * np.cumsum(f0) / 16000.0
            sig = sum(np.sin(k * phase) / k for k in range(1, 6))
        else:
            sig = rng.standard_normal(samples) * (np.sin(2 * np.pi * rng.uniform(2, 8) * t) > 0)
        out[i] = (rng.uniform(0.1, 0.8) * sig / (np.abs(sig).max() + 1e-9)).astype(np.float32)
    return {name: out}


def features(split: str, n: int, shape: tuple[int, ...], name: str) -> dict[str, np.ndarray]:
    """SYNTHETIC log-mel-like frames (for the speaker / keyword front-ends): smooth in time and frequency."""
    rng = np.random.default_rng(SEED + (split == "val"))
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    for axis in range(1, x.ndim):
        x = (x + np.roll(x, 1, axis=axis) + np.roll(x, -1, axis=axis)) / 3
    return {name: x.astype(np.float32)}


def normal(split: str, n: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """SYNTHETIC standard-normal tensors: recurrent state inputs, where no data exists."""
    rng = np.random.default_rng(SEED + (split == "val"))
    return {k: (0.5 * rng.standard_normal((n, *s))).astype(np.float32) for k, s in shapes.items()}
