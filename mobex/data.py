"""Validation and calibration data, and the consistency checks run before any conversion.

Data is read by mobex.datasources: `.npz` archives (loaded with `allow_pickle=False`) holding one
array per model input, named after it, with the sample axis first, or folders of pictures or sounds
and CSV/Parquet tables put through the recipe's preprocessing contract. Either way the result is one
array per input of shape `(N, *shape[1:])` where `shape` is the recipe's input shape, fed `shape[0]`
samples at a time, and optional labels (class indices for classifiers, targets for regression).
Before numpy reads an `.npz`, each member's .npy header is checked (mobex.datasources.npz): object
arrays (pickles) are refused, and the arrays may declare at most 2 GiB in total ($MOBEX_MAX_DATA_BYTES
raises it), so a small compressed file cannot expand into memory without bound.

Checks, in order, each listed in the report with what it found: array names and shapes against the
recipe's inputs, dtypes (and the cast to the input dtype), NaN/inf, empty and constant arrays, values
against the range `[preprocessing].range` implies, label count and class-index range against the
labels file. Problems that make validation meaningless (NaN, wrong shapes, values far outside the
preprocessing range, labels beyond the labels file, validation data whose every input is constant)
raise DataError; the rest are warnings. A constant input next to varying ones (an attention mask of
ones) and constant calibration or training arrays are warnings only: such inputs are legitimate there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobex.datasources import SourceRequest, read_source
from mobex.datasources.base import Check
from mobex.errors import DataError
from mobex.recipe import Recipe

__all__ = ["Check", "Dataset", "load_dataset", "load_validation_and_calibration", "preprocessing_ranges"]

# Values may stray this fraction of the declared [lo, hi] span outside it before the data is refused
# (augmentation, normalisation round-off); beyond it the data was almost surely scaled differently
# from what the model expects (e.g. 0..255 pixels for a model trained on 0..1).
RANGE_TOLERANCE = 0.1
_FLOAT_KINDS = "f"
_INT_KINDS = "iub"


@dataclass
class Dataset:
    """Arrays for every model input, sample axis first, already cast to the input dtypes."""

    role: str
    path: Path
    arrays: dict[str, np.ndarray]
    batch: int
    labels: np.ndarray | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        return next(iter(self.arrays.values())).shape[0]

    @property
    def num_batches(self) -> int:
        return self.num_samples // self.batch

    def feed(self, index: int) -> dict[str, np.ndarray]:
        """Batch `index` as a feed dict with the recipe's input shapes."""
        lo, hi = index * self.batch, (index + 1) * self.batch
        return {name: arr[lo:hi] for name, arr in self.arrays.items()}

    def feeds(self, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        count = self.num_batches if limit is None else min(limit, self.num_batches)
        for i in range(count):
            yield self.feed(i)

    def batch_labels(self) -> np.ndarray | None:
        """Labels aligned with the concatenated outputs of all batches."""
        if self.labels is None:
            return None
        return self.labels[: self.num_batches * self.batch]


def load_dataset(recipe: Recipe, role: str, path: Path) -> Dataset:
    """Load and check one data file against the recipe. Raises DataError on the first hard problem."""
    full = recipe.resolve(path)
    label = f"[data].{role} ({full.name})"
    source = read_source(SourceRequest(recipe, role, full))  # npz, folder or table: mobex.datasources
    raw = source.arrays
    found = source.found if source.found is not None else sorted(raw)

    checks: list[Check] = list(source.checks)
    ranges = preprocessing_ranges(recipe)
    batch = recipe.inputs[0].shape[0]
    arrays: dict[str, np.ndarray] = {}
    constant: list[str] = []
    for spec in recipe.inputs:
        if spec.name not in raw:
            raise DataError(
                f"{label}: no array named {spec.name!r} (found: {', '.join(found) or 'none'})",
                "name each array after the recipe input it feeds",
            )
        arr = raw[spec.name]
        want_tail = tuple(spec.shape[1:])
        if arr.ndim != len(spec.shape) or tuple(arr.shape[1:]) != want_tail:
            raise DataError(
                f"{label}: array {spec.name!r} has shape {list(arr.shape)}, "
                f"expected [N, {', '.join(map(str, want_tail))}] for input shape {spec.shape}",
                "put the sample axis first; every sample must match the input shape after the batch axis",
            )
        if arr.shape[0] == 0:
            raise DataError(f"{label}: array {spec.name!r} is empty")
        if spec.shape[0] != batch:
            raise DataError(f"{label}: all inputs must share the batch size {batch}; {spec.name!r} has {spec.shape[0]}")
        arrays[spec.name] = _cast(label, spec.name, arr, spec.dtype)
        checks.append(Check(f"{role}.{spec.name}.shape", True, f"{list(arr.shape)} matches {spec.shape}"))
        cast = "" if arr.dtype == np.dtype(spec.dtype) else f", cast to {spec.dtype}"
        checks.append(Check(f"{role}.{spec.name}.dtype", True, f"{arr.dtype}{cast}"))
        checks.append(_finite_check(label, role, spec.name, arr))
        checks.append(_constant_check(role, spec.name, arr))
        if not checks[-1].passed:
            constant.append(spec.name)
        range_check = _preprocessing_range_check(label, role, spec.name, arrays[spec.name], ranges)
        if range_check is not None:
            checks.append(range_check)

    if role == "validation" and len(constant) == len(recipe.inputs):
        raise DataError(
            f"{label}: every input is constant ({', '.join(map(repr, constant))}): parity and accuracy on it "
            "say nothing about the model",
            "validate on real samples; constant inputs are fine in calibration or training data",
        )
    counts = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(counts.values())) != 1:
        raise DataError(f"{label}: inputs have different sample counts: {counts}")
    n = next(iter(counts.values()))
    if n % batch:
        raise DataError(
            f"{label}: {n} samples is not a multiple of the batch size {batch}",
            "trim the arrays or change the input's first dimension",
        )

    labels = source.labels
    if labels is not None:
        labels = _check_labels(recipe, label, role, labels, n, checks)
    return Dataset(role=role, path=full, arrays=arrays, batch=batch, labels=labels, checks=checks)


def _cast(label: str, name: str, arr: np.ndarray, dtype: str) -> np.ndarray:
    want = np.dtype(dtype)
    if arr.dtype.kind in _FLOAT_KINDS and want.kind not in _FLOAT_KINDS:
        raise DataError(
            f"{label}: array {name!r} is {arr.dtype} but the input is {dtype}",
            "store integer inputs (token ids, masks) as integers",
        )
    if arr.dtype.kind not in _FLOAT_KINDS + _INT_KINDS:
        raise DataError(f"{label}: array {name!r} has dtype {arr.dtype}, which cannot feed a {dtype} input")
    if arr.dtype.kind in _INT_KINDS and want.kind in _INT_KINDS and arr.size:
        info = np.iinfo(want) if want.kind != "b" else None
        if info is not None and (arr.min() < info.min or arr.max() > info.max):
            raise DataError(f"{label}: array {name!r} has values outside the range of {dtype}")
    return np.ascontiguousarray(arr.astype(want, copy=False))


def _finite_check(label: str, role: str, name: str, arr: np.ndarray) -> Check:
    if arr.dtype.kind != "f":
        return Check(f"{role}.{name}.finite", True, "integer array")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.argwhere(bad.reshape(arr.shape[0], -1).any(axis=1))[0][0])
        kinds = []
        if np.isnan(arr).any():
            kinds.append(f"{int(np.isnan(arr).sum())} NaN")
        if np.isinf(arr).any():
            kinds.append(f"{int(np.isinf(arr).sum())} inf")
        raise DataError(
            f"{label}: array {name!r} contains {' and '.join(kinds)} values (first in sample {first})",
            "clean or drop those samples; NaN/inf make every parity metric meaningless",
        )
    return Check(f"{role}.{name}.finite", True, "no NaN or inf")


def _constant_check(role: str, name: str, arr: np.ndarray) -> Check:
    if arr.size and np.all(arr == arr.flat[0]):
        return Check(f"{role}.{name}.varies", False, f"every value is {arr.flat[0]!r}: metrics on it say little")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    return Check(f"{role}.{name}.range", True, f"values in [{lo:.4g}, {hi:.4g}]")


def preprocessing_ranges(recipe: Recipe) -> dict[str, tuple[float, float]] | tuple[float, float] | None:
    """`[preprocessing].range` (`[lo, hi]` for every float input, or one per input), else the range an image
    contract's scale/mean/std imply for 0..255 pixels; None when neither says (mobex.preprocessing)."""
    return recipe.preprocessing.value_ranges()


def _preprocessing_range_check(
    label: str, role: str, name: str, arr: np.ndarray, ranges: dict | tuple | None
) -> Check | None:
    """Values against the range the preprocessing implies: far outside is an error, slightly outside a warning."""
    check_name = f"{role}.{name}.preprocessing_range"
    if ranges is None:
        return None
    if isinstance(ranges, dict):
        if name not in ranges:
            return None
        lo, hi = ranges[name]
    else:
        if arr.dtype.kind != "f":  # the input's dtype (after the cast), not the file's: uint8 pixels feed float inputs
            return Check(check_name, True, "integer input: [preprocessing].range applies to float inputs only")
        lo, hi = ranges
    tol = RANGE_TOLERANCE * (hi - lo)
    amin, amax = float(arr.min()), float(arr.max())
    found = f"values in [{amin:.4g}, {amax:.4g}]"
    far = (arr < lo - tol) | (arr > hi + tol)
    if far.any():
        count = int(far.sum())
        first = int(np.argwhere(far.reshape(arr.shape[0], -1).any(axis=1))[0][0])
        raise DataError(
            f"{label}: array {name!r} has {found}, far outside [preprocessing].range [{lo:g}, {hi:g}]: "
            f"{count} values ({100 * count / arr.size:.3g}%) beyond it by more than {RANGE_TOLERANCE:.0%} of the span "
            f"(first in sample {first})",
            "scale the data the way the preprocessing says (e.g. divide 0..255 pixels by 255), "
            "or correct [preprocessing].range",
        )
    outside = int(np.sum((arr < lo) | (arr > hi)))
    if outside:
        return Check(
            check_name,
            False,
            f"{found}: {outside} values slightly outside [{lo:g}, {hi:g}] (within {RANGE_TOLERANCE:.0%} of the span)",
        )
    return Check(check_name, True, f"{found} within [preprocessing].range [{lo:g}, {hi:g}]")


def _check_labels(recipe: Recipe, label: str, role: str, labels: np.ndarray, n: int, checks: list[Check]) -> np.ndarray:
    if labels.shape[0] != n:
        raise DataError(f"{label}: 'labels' has {labels.shape[0]} entries for {n} samples")
    if recipe.model.task == "classification":
        if labels.dtype.kind not in _INT_KINDS or labels.ndim != 1:
            raise DataError(
                f"{label}: 'labels' must be a 1-D integer array of class indices, "
                f"got {labels.dtype} {list(labels.shape)}"
            )
        names = recipe.labels()
        if names is not None and (labels.min() < 0 or labels.max() >= len(names)):
            raise DataError(
                f"{label}: 'labels' holds class indices in [{labels.min()}, {labels.max()}], "
                f"but the labels file has {len(names)} classes"
            )
        checks.append(Check(f"{role}.labels.range", True, f"class indices in [{labels.min()}, {labels.max()}]"))
        return labels.astype(np.int64)
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        raise DataError(f"{label}: 'labels' contains NaN or inf")
    return labels


def load_validation_and_calibration(recipe: Recipe) -> tuple[Dataset, Dataset]:
    """Both data sets the build needs; calibration defaults to the validation data."""
    validation = load_dataset(recipe, "validation", recipe.data.validation)
    if recipe.data.calibration is None:
        return validation, validation
    return validation, load_dataset(recipe, "calibration", recipe.data.calibration)


def example_inputs(recipe: Recipe, data: Dataset) -> dict:
    """The first batch of `data` as torch tensors, keyed by input name in call order: real values trace best."""
    import torch

    feed = data.feed(0)
    return {spec.name: torch.from_numpy(feed[spec.name].copy()) for spec in recipe.inputs}
