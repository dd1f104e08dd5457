"""Validation and calibration data, and the consistency checks run before any conversion.

Data files are `.npz` archives (loaded with `allow_pickle=False`) holding one array per model
input, named after it, with the sample axis first: shape `(N, *shape[1:])` where `shape` is the
recipe's input shape. Samples are fed `shape[0]` at a time. An optional `labels` array holds the
ground truth (class indices for classifiers, targets for regression). Before numpy reads an array,
`read_npz` checks each member's .npy header: object arrays (pickles) are refused, and the arrays
may declare at most MAX_DATA_BYTES in total (2 GiB; $MOBEX_MAX_DATA_BYTES raises it), so a small
compressed file cannot expand into memory without bound.

Checks, in order, each listed in the report with what it found: array names and shapes against the
recipe's inputs, dtypes (and the cast to the input dtype), NaN/inf, empty and constant arrays, values
against the range `[preprocessing].range` implies, label count and class-index range against the
labels file. Problems that make validation meaningless (NaN, wrong shapes, values far outside the
preprocessing range, labels beyond the labels file, validation data whose every input is constant)
raise DataError; the rest are warnings. A constant input next to varying ones (an attention mask of
ones) and constant calibration or training arrays are warnings only: such inputs are legitimate there.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobex.errors import DataError, RecipeError
from mobex.recipe import Recipe

LABELS_KEY = "labels"
# Values may stray this fraction of the declared [lo, hi] span outside it before the data is refused
# (augmentation, normalisation round-off); beyond it the data was almost surely scaled differently
# from what the model expects (e.g. 0..255 pixels for a model trained on 0..1).
RANGE_TOLERANCE = 0.1
_FLOAT_KINDS = "f"
_INT_KINDS = "iub"
MAX_DATA_BYTES = 2 << 30  # declared array bytes per .npz file
MAX_DATA_BYTES_ENV = "MOBEX_MAX_DATA_BYTES"
MAX_ARRAYS = 10_000
_NPY_HEADER_MAX = 10_000


@dataclass
class Check:
    """One data check for the report: what was checked and what was found."""

    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


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
    raw = read_npz(full, label)

    checks: list[Check] = []
    ranges = preprocessing_ranges(recipe)
    batch = recipe.inputs[0].shape[0]
    arrays: dict[str, np.ndarray] = {}
    constant: list[str] = []
    for spec in recipe.inputs:
        if spec.name not in raw:
            raise DataError(
                f"{label}: no array named {spec.name!r} (found: {', '.join(sorted(raw)) or 'none'})",
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

    labels = raw.get(LABELS_KEY)
    if labels is not None:
        labels = _check_labels(recipe, label, role, labels, n, checks)
    unknown = sorted(set(raw) - set(arrays) - {LABELS_KEY})
    if unknown:
        checks.append(Check(f"{role}.extra_arrays", True, f"ignored arrays not named after an input: {unknown}"))
    return Dataset(role=role, path=full, arrays=arrays, batch=batch, labels=labels, checks=checks)


def max_data_bytes() -> int:
    """The cap on the array bytes one .npz may declare: MAX_DATA_BYTES, or $MOBEX_MAX_DATA_BYTES."""
    value = os.environ.get(MAX_DATA_BYTES_ENV, "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 18 else MAX_DATA_BYTES


def read_npz(path: Path, label: str) -> dict[str, np.ndarray]:
    """Every array of an .npz, after checking (from the .npy headers, before reading any data) that none
    holds pickled objects and that together they declare at most `max_data_bytes()`."""
    if not path.is_file():
        raise DataError(f"{label}: {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise DataError(
            f"{label}: {path} is not a .npz archive", "write the arrays with numpy.savez (a zip of .npy files)"
        )
    declared = _declared_npz_bytes(path, label)
    cap = max_data_bytes()
    if declared > cap:
        raise DataError(
            f"{label}: {path} declares {declared} bytes of arrays, more than the {cap} allowed",
            f"split the data, or raise the cap with {MAX_DATA_BYTES_ENV}=<bytes> if this much is intended",
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as exc:
        raise DataError(f"{label}: {path} needs pickled objects, which mobex refuses to load: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - corrupt members, bad CRCs
        raise DataError(f"{label}: {path} is not a readable .npz archive: {exc}") from None


def _declared_npz_bytes(path: Path, label: str) -> int:
    """Sum of the array sizes the members' .npy headers declare (each no larger than the member itself)."""
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            if len(infos) > MAX_ARRAYS:
                raise DataError(f"{label}: {path} holds {len(infos)} arrays, more than the {MAX_ARRAYS} allowed")
            for info in infos:
                with zf.open(info) as member:
                    shape, dtype = _npy_header(member)
                if dtype.hasobject:
                    raise DataError(
                        f"{label}: {path} array {info.filename!r} holds pickled objects (dtype object), which "
                        "mobex refuses to load",
                        "store numbers only (numeric dtypes)",
                    )
                nbytes = math.prod(shape) * dtype.itemsize
                if nbytes > info.file_size:
                    raise DataError(f"{label}: {path} array {info.filename!r} declares more data than it holds")
                total += nbytes
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bad header or zip structure
        raise DataError(f"{label}: {path} is not a readable .npz archive: {exc}") from None
    return total


def _npy_header(member) -> tuple[tuple[int, ...], np.dtype]:  # noqa: ANN001 - a zip member file object
    from numpy.lib import format as npy

    version = npy.read_magic(member)
    if version == (1, 0):
        shape, _, dtype = npy.read_array_header_1_0(member, max_header_size=_NPY_HEADER_MAX)
    elif version == (2, 0):
        shape, _, dtype = npy.read_array_header_2_0(member, max_header_size=_NPY_HEADER_MAX)
    else:
        raise ValueError(f".npy format version {version} is not supported (numpy.savez writes 1.0 or 2.0)")
    return tuple(int(d) for d in shape), dtype


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
    """`[preprocessing].range`: `[lo, hi]` for every float input, or a table `input = [lo, hi]`; None if absent."""
    raw = recipe.preprocessing.get("range")
    if raw is None:
        return None
    where = f"{recipe.path}: [preprocessing].range"
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - {i.name for i in recipe.inputs})
        if unknown:
            raise RecipeError(f"{where}: no input named {', '.join(map(repr, unknown))}")
        return {name: _range_pair(value, f"{where}.{name}") for name, value in raw.items()}
    return _range_pair(raw, where)


def _range_pair(value: object, where: str) -> tuple[float, float]:
    ok = (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )
    if not ok or not value[0] < value[1]:  # type: ignore[index]
        raise RecipeError(
            f"{where}: expected [lo, hi] with lo < hi, got {value!r}",
            "write e.g. range = [0.0, 1.0], or one range per input: [preprocessing.range] image = [0.0, 1.0]",
        )
    return float(value[0]), float(value[1])  # type: ignore[index]


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
