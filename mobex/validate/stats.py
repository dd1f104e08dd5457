"""Reference statistics of a model's inputs and outputs on the validation data, for drift checks.

A bundle carries them as `assets/reference_stats.json`; `mobex drift` computes the same features
on new data (e.g. collected from the app) and compares. Every feature is one number per sample, so
the statistical tests see independent observations:

- inputs with at most MAX_ELEMENT_FEATURES values per sample (tabular rows): every value, named
  after `[preprocessing].feature_names` when it has one name per value;
- images (channels-first, at most 4 channels): per channel, each sample's mean and standard
  deviation, plus up to MAX_POSITIONS individual pixels spread over those that vary;
- other large tensors (token ids, audio, embeddings): each sample's mean and standard deviation,
  plus up to MAX_POSITIONS individual positions;
- a classifier's scores: the top-1 probability (softmax unless the scores already are
  probabilities) and the predicted class (categorical: class frequencies).

Numeric features keep count, mean, std, min, max, fixed quantiles, a histogram on fixed bin edges
(the reference deciles; PSI uses it) and a seeded subsample of REFERENCE_SAMPLE raw values (the
two-sample KS test uses it). Values are rounded to 6 significant digits: the asset stays small and
byte-identical between builds of the same model and data. The histogram counts are taken on the
rounded values, as `mobex drift` rounds new values before binning them, so the validation data
compared with its own statistics has a PSI of exactly 0.
"""

from __future__ import annotations

import math

import numpy as np

STATS_SCHEMA = "https://mobex.dev/schemas/reference-stats/v1"
MAX_ELEMENT_FEATURES = 32
MAX_POSITIONS = 8
MAX_IMAGE_CHANNELS = 4
REFERENCE_SAMPLE = 128
PSI_BINS = 10
QUANTILES: tuple[float, ...] = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
_SEED = 0


def _r(value: float) -> float:
    """Round to 6 significant digits (JSON-safe: non-finite values become None upstream)."""
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.6g}")


def rounded(values: np.ndarray) -> np.ndarray:
    """`values` rounded exactly as the reference asset stores them (`_r`), so new data and the reference
    compare on the same grid: a top-1 score of 0.9999999 must tie with the stored 1.0, not fall below it."""
    v = np.asarray(values, np.float64).reshape(-1)
    return np.fromiter((_r(x) for x in v), np.float64, count=v.size)


# --------------------------------------------------------------------------- plans


def plan_tensor(
    name: str, role: str, values: np.ndarray, *, task: str = "other", preprocessing: dict | None = None, index: int = 0
) -> dict:
    """How to turn a tensor (N, ...) into per-sample features; decided once, on the reference data.

    The plan is stored in the asset, so drift computes exactly the same features on new data.
    """
    preprocessing = preprocessing or {}
    sample_shape = [int(d) for d in values.shape[1:]]
    size = int(np.prod(sample_shape)) if sample_shape else 1
    plan: dict = {"tensor": name, "role": role, "sample_shape": sample_shape}
    flat = values.reshape(values.shape[0], -1)
    if role == "output" and task == "classification" and index == 0 and size > 1:
        rows = flat.astype(np.float64)
        is_prob = bool(
            rows.size and rows.min() >= 0 and rows.max() <= 1 and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3)
        )
        plan.update(layout="scores", softmax=not is_prob, classes=size)
        return plan
    if size <= MAX_ELEMENT_FEATURES:
        names = preprocessing.get("feature_names") if role == "input" else None
        if not (isinstance(names, list) and len(names) == size and all(isinstance(n, str) for n in names)):
            names = [f"{name}[{i}]" for i in range(size)] if size > 1 else [name]
        plan.update(layout="elements", feature_names=names)
        return plan
    image = (
        role == "input"
        and len(sample_shape) == 3
        and sample_shape[0] <= MAX_IMAGE_CHANNELS
        and (preprocessing.get("kind") in (None, "image"))
    )
    plan.update(layout="image" if image else "tensor", positions=_positions(flat))
    if image:
        plan["channels"] = sample_shape[0]
    return plan


def _positions(flat: np.ndarray) -> list[int]:
    """Up to MAX_POSITIONS flat indices, evenly spread over the positions whose values vary."""
    spread = np.ptp(flat.astype(np.float64), axis=0)  # float: bool masks have no subtraction
    varying = np.flatnonzero(spread > 0) if flat.shape[0] > 1 else np.arange(flat.shape[1])
    if varying.size == 0:
        varying = np.arange(flat.shape[1])
    if varying.size <= MAX_POSITIONS:
        return [int(i) for i in varying]
    picks = np.linspace(0, varying.size - 1, MAX_POSITIONS).round().astype(int)
    return [int(varying[i]) for i in picks]


def _position_name(name: str, sample_shape: list[int], flat_index: int) -> str:
    return f"{name}[{','.join(str(int(i)) for i in np.unravel_index(flat_index, sample_shape))}]"


def features(plan: dict, values: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """(feature name, kind 'numeric'|'categorical', one value per sample) for a tensor, as the plan says."""
    n = values.shape[0]
    expected = tuple(plan["sample_shape"])
    if tuple(values.shape[1:]) != expected:
        raise ValueError(f"{plan['tensor']!r} has sample shape {list(values.shape[1:])}, expected {list(expected)}")
    flat = values.reshape(n, -1).astype(np.float64)
    name = plan["tensor"]
    layout = plan["layout"]
    if layout == "scores":
        scores = flat
        if plan.get("softmax"):
            shifted = scores - scores.max(axis=1, keepdims=True)
            exp = np.exp(shifted)
            scores = exp / exp.sum(axis=1, keepdims=True)
        return [
            (f"{name}.top1_score", "numeric", scores.max(axis=1)),
            (f"{name}.predicted_class", "categorical", flat.argmax(axis=1).astype(np.float64)),
        ]
    if layout == "elements":
        return [(fname, "numeric", flat[:, i]) for i, fname in enumerate(plan["feature_names"])]
    out: list[tuple[str, str, np.ndarray]] = []
    if layout == "image":
        per_channel = flat.reshape(n, plan["channels"], -1)
        for c in range(plan["channels"]):
            out.append((f"{name}.mean[c{c}]", "numeric", per_channel[:, c].mean(axis=1)))
            out.append((f"{name}.std[c{c}]", "numeric", per_channel[:, c].std(axis=1)))
    else:
        out.append((f"{name}.mean", "numeric", flat.mean(axis=1)))
        out.append((f"{name}.std", "numeric", flat.std(axis=1)))
    for pos in plan["positions"]:
        out.append((_position_name(name, plan["sample_shape"], pos), "numeric", flat[:, pos]))
    return out


# --------------------------------------------------------------------------- statistics


def numeric_stats(values: np.ndarray) -> dict:
    """Summary, decile-edged histogram and a seeded raw subsample of one numeric feature."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"kind": "numeric", "count": 0}
    edges = np.unique(np.quantile(v, np.linspace(0, 1, PSI_BINS + 1)[1:-1]))
    edges = np.unique([_r(e) for e in edges])
    on_grid = rounded(v)  # binned exactly as drift bins new values: on the stored 6-digit grid
    rng = np.random.default_rng(_SEED)
    pick = np.sort(rng.choice(v.size, size=min(REFERENCE_SAMPLE, v.size), replace=False))
    return {
        "kind": "numeric",
        "count": int(v.size),
        "mean": _r(v.mean()),
        "std": _r(v.std()),
        "min": _r(v.min()),
        "max": _r(v.max()),
        "quantiles": {f"{q:g}": _r(x) for q, x in zip(QUANTILES, np.quantile(v, QUANTILES), strict=True)},
        "histogram": {"edges": [float(e) for e in edges], "counts": bin_counts(on_grid, edges)},
        "sample": [_r(x) for x in v[pick]],
    }


def bin_counts(values: np.ndarray, edges: np.ndarray | list[float]) -> list[int]:
    """Counts per bin (-inf, e0], (e0, e1], ..., (e_last, inf): len(edges) + 1 bins."""
    index = np.searchsorted(np.asarray(edges, np.float64), np.asarray(values, np.float64), side="left")
    return [int(c) for c in np.bincount(index, minlength=len(edges) + 1)]


def categorical_stats(values: np.ndarray, categories: int) -> dict:
    v = np.asarray(values).astype(np.int64)
    return {"kind": "categorical", "count": int(v.size), "counts": category_counts(v, categories)}


def category_counts(values: np.ndarray, categories: int) -> list[int]:
    v = np.asarray(values).astype(np.int64)
    return [int(c) for c in np.bincount(np.clip(v, 0, categories - 1), minlength=categories)[:categories]]


def tensor_stats(plan: dict, values: np.ndarray) -> list[dict]:
    """Statistics of every feature of one tensor, in the plan's order."""
    out = []
    for fname, kind, column in features(plan, values):
        stats = categorical_stats(column, plan["classes"]) if kind == "categorical" else numeric_stats(column)
        out.append({"name": fname, "tensor": plan["tensor"], "role": plan["role"], **stats})
    return out


def reference_statistics(
    inputs: dict[str, np.ndarray],
    outputs: list[np.ndarray] | None,
    output_names: list[str] | None,
    *,
    task: str,
    preprocessing: dict | None = None,
    class_output: int = 0,
) -> dict:
    """The whole asset: a plan and features per input and output (outputs may be None: inputs only).

    `class_output`: a classifier's output holding the class scores (`[model].class_output`)."""
    plans = [plan_tensor(name, "input", arr, task=task, preprocessing=preprocessing) for name, arr in inputs.items()]
    feats = [f for plan, arr in zip(plans, inputs.values(), strict=True) for f in tensor_stats(plan, arr)]
    samples = int(next(iter(inputs.values())).shape[0]) if inputs else 0
    if outputs is not None:
        names = output_names or [f"output_{i}" for i in range(len(outputs))]
        for i, (name, arr) in enumerate(zip(names, outputs, strict=True)):
            # plan_tensor takes the output at index 0 for the class scores
            plan = plan_tensor(name, "output", np.asarray(arr), task=task, index=i - class_output)
            plans.append(plan)
            feats.extend(tensor_stats(plan, np.asarray(arr)))
    return {
        "schema": STATS_SCHEMA,
        "samples": samples,
        "task": task,
        "binning": "histogram edges are the reference deciles; bins are (-inf, e0], (e0, e1], ..., (e_last, inf)",
        "sample_note": f"'sample': up to {REFERENCE_SAMPLE} reference values per feature, for the two-sample KS test",
        "plans": plans,
        "features": feats,
    }
