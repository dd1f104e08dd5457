"""Drift: does new data (e.g. collected from the app) still look like the validation data a bundle was checked on?

`check_bundle_drift(bundle, data)` opens a bundle (verifying its signature first when given a public
key), reads `assets/reference_stats.json`, computes the same per-sample features (see
mobex.validate.stats) on the new inputs and on the bundle model's outputs for them (TFLite through
LiteRT for an Android bundle, the MIL reference interpreter or Core ML for an iOS bundle), and
compares each feature with two measures:

- PSI (population stability index) over the reference's decile bins, with fractions floored at
  PSI_EPSILON: below 0.1 stable, 0.1-0.2 moderate shift, above 0.2 (the default threshold) a shift;
- the two-sample Kolmogorov-Smirnov test against the reference subsample (numeric features). `ks_p`
  is the family-wise level: with n numeric features each test uses ks_p / n (Bonferroni), so the
  chance of a false alarm over the whole table stays about ks_p.

Categorical features (a classifier's predicted class) use PSI over the class frequencies only.
A feature drifts when its PSI exceeds the threshold or its KS p-value is below the per-test level;
`mobex drift` then exits with DRIFT_EXIT_CODE.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mobex.errors import DRIFT_EXIT_CODE, DataError, UsageError
from mobex.validate import stats as stats_mod

REFERENCE_STATS_ASSET = "assets/reference_stats.json"
DEFAULT_PSI = 0.2
DEFAULT_KS_P = 0.01
PSI_EPSILON = 1e-4
MIN_SAMPLES = 30  # fewer new samples than this: the table says the tests have little power


@dataclass
class FeatureDrift:
    name: str
    tensor: str
    role: str
    kind: str
    samples: int
    psi: float | None
    ks_statistic: float | None = None
    ks_p: float | None = None
    reference_mean: float | None = None
    mean: float | None = None
    drifted: bool = False
    reasons: list[str] = field(default_factory=list)


@dataclass
class DriftReport:
    bundle: str
    data: str
    verified: bool
    verification: str
    samples: int
    psi_threshold: float
    ks_p: float
    ks_p_per_test: float
    features: list[FeatureDrift]
    notes: list[str] = field(default_factory=list)
    outputs_checked: bool = True

    @property
    def drifted(self) -> bool:
        return any(f.drifted for f in self.features)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["drifted"] = self.drifted
        out["drifted_features"] = [f.name for f in self.features if f.drifted]
        out["exit_code"] = DRIFT_EXIT_CODE if self.drifted else 0
        return json_safe(out)


def json_safe(value):  # noqa: ANN001, ANN202
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------- measures


def psi(reference_counts: list[int] | np.ndarray, new_counts: list[int] | np.ndarray) -> float:
    """Population stability index of two histograms on the same bins: sum((q - p) * ln(q / p))."""
    p = np.asarray(reference_counts, np.float64)
    q = np.asarray(new_counts, np.float64)
    if p.shape != q.shape:
        raise ValueError(f"PSI needs the same bins: {p.shape} vs {q.shape}")
    if p.sum() == 0 or q.sum() == 0:
        return float("nan")
    p = np.maximum(p / p.sum(), PSI_EPSILON)
    q = np.maximum(q / q.sum(), PSI_EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def ks_2samp(reference: np.ndarray, new: np.ndarray) -> tuple[float, float]:
    """Two-sample KS statistic and p-value (scipy's exact/asymptotic choice when scipy is installed)."""
    a = np.asarray(reference, np.float64)
    b = np.asarray(new, np.float64)
    try:
        from scipy.stats import ks_2samp as scipy_ks
    except ImportError:  # pragma: no cover - scipy is present wherever scikit-learn is
        return _ks_2samp_numpy(a, b)
    result = scipy_ks(a, b)
    return float(result.statistic), float(result.pvalue)


def _ks_2samp_numpy(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """KS statistic with the asymptotic Kolmogorov p-value (Stephens' small-sample correction)."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    d = float(np.max(np.abs(np.searchsorted(a, grid, "right") / a.size - np.searchsorted(b, grid, "right") / b.size)))
    en = math.sqrt(a.size * b.size / (a.size + b.size))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 1e-3:
        return d, 1.0
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * (k * lam) ** 2) for k in range(1, 101))
    return d, float(min(1.0, max(0.0, p)))


# --------------------------------------------------------------------------- comparison


def compare(
    reference: dict,
    inputs: dict[str, np.ndarray],
    outputs: list[np.ndarray] | None,
    *,
    psi_threshold: float = DEFAULT_PSI,
    ks_p: float = DEFAULT_KS_P,
) -> tuple[list[FeatureDrift], float]:
    """Every feature of the reference asset against the new data; returns (features, per-test KS level)."""
    ref_features = {f["name"]: f for f in reference["features"]}
    rows: list[FeatureDrift] = []
    output_plans = [p for p in reference["plans"] if p["role"] == "output"]
    for plan in reference["plans"]:
        if plan["role"] == "input":
            if plan["tensor"] not in inputs:
                raise DataError(f"the new data has no array named {plan['tensor']!r} (found: {sorted(inputs)})")
            values = inputs[plan["tensor"]]
        else:
            if outputs is None:
                continue
            values = outputs[output_plans.index(plan)]
        try:
            columns = stats_mod.features(plan, np.asarray(values))
        except ValueError as exc:
            raise DataError(f"new data: {exc}", "the data must have the shape the bundle's model takes") from None
        for fname, kind, column in columns:
            rows.append(_compare_feature(ref_features[fname], plan, fname, kind, column))
    numeric = [r for r in rows if r.ks_p is not None]
    per_test = ks_p / max(1, len(numeric))
    for r in rows:
        if r.psi is not None and math.isfinite(r.psi) and r.psi > psi_threshold:
            r.drifted = True
            r.reasons.append(f"PSI {r.psi:.3g} > {psi_threshold:g}")
        if r.ks_p is not None and r.ks_p < per_test:
            r.drifted = True
            r.reasons.append(f"KS p {r.ks_p:.2g} < {per_test:.2g}")
    return rows, per_test


def _compare_feature(ref: dict, plan: dict, name: str, kind: str, column: np.ndarray) -> FeatureDrift:
    values = np.asarray(column, np.float64)
    values = stats_mod.rounded(values[np.isfinite(values)])
    row = FeatureDrift(name, plan["tensor"], plan["role"], kind, samples=int(values.size), psi=None)
    if values.size == 0 or not ref.get("count"):
        row.reasons.append("no values to compare")
        return row
    row.mean = float(values.mean())
    if kind == "categorical":
        counts = ref["counts"]
        row.psi = psi(counts, stats_mod.category_counts(values, len(counts)))
        row.reference_mean = None
        return row
    row.reference_mean = ref["mean"]
    row.psi = psi(ref["histogram"]["counts"], stats_mod.bin_counts(values, ref["histogram"]["edges"]))
    row.ks_statistic, row.ks_p = ks_2samp(np.asarray(ref["sample"], np.float64), values)
    return row


# --------------------------------------------------------------------------- bundles


def load_new_data(path: Path, manifest_inputs: list[dict]) -> dict[str, np.ndarray]:
    """An .npz with one array per model input (sample axis first), checked against the bundle's inputs."""
    from mobex.datasources.npz import read_npz

    if not path.exists():
        raise UsageError(f"data file {path} does not exist")
    raw = read_npz(path, "new data")
    arrays = {}
    for spec in manifest_inputs:
        name, shape = spec["name"], list(spec["shape"])
        if name not in raw:
            raise DataError(
                f"{path.name}: no array named {name!r} (found: {', '.join(sorted(raw)) or 'none'})",
                "name each array after the bundle's model input (see `mobex inspect BUNDLE`)",
            )
        arr = raw[name]
        if arr.ndim != len(shape) or list(arr.shape[1:]) != shape[1:]:
            tail = ", ".join(map(str, shape[1:]))
            raise DataError(
                f"{path.name}: array {name!r} has shape {list(arr.shape)}, expected [N, {tail}]",
                "put the sample axis first; each sample must have the model input's shape after the batch axis",
            )
        if arr.shape[0] == 0:
            raise DataError(f"{path.name}: array {name!r} is empty")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise DataError(f"{path.name}: array {name!r} contains NaN or inf", "clean or drop those samples")
        if arr.dtype.kind not in "biuf":
            raise DataError(f"{path.name}: array {name!r} has dtype {arr.dtype}, not numbers")
        arrays[name] = _as_built(arr, spec)
    counts = {k: a.shape[0] for k, a in arrays.items()}
    if len(set(counts.values())) > 1:
        raise DataError(f"{path.name}: inputs have different sample counts: {counts}")
    return arrays


def _as_built(arr: np.ndarray, spec: dict) -> np.ndarray:
    """Float data in the precision the build computed the reference statistics in (the recipe's input
    dtype; float32 behind an int8-quantized model input), so equal data gives equal features."""
    if arr.dtype.kind != "f":
        return arr
    if spec.get("quantization"):
        return arr.astype(np.float32, copy=False)
    dtype = np.dtype(spec["dtype"])
    return arr.astype(dtype, copy=False) if dtype.kind == "f" else arr
