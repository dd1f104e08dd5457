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

Streaming models (`[[state]]` in the recipe) take sequences instead (`Sequences`): every other input's array
is [num_sequences, steps, *shape[1:]], a state input's array (optional: zeros) the initial state of each
sequence, [num_sequences, *shape[1:]], and labels, when given, one per step: [num_sequences, steps, ...].
`Dataset.arrays` then holds one sample per step, grouped by batch of sequences ([group, step, sequence in
the batch]), with the initial state at every step until `with_fed_states` records the states a model fed
itself (mobex.runtime.streaming).

Integer inputs that a requested target stores as int32 (TFLite and Core ML store int64 inputs as int32) must
fit int32: values outside are refused here, before any conversion, and the checked range is reported.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobex import plugins
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


@dataclass(frozen=True)
class Sequences:
    """A streaming model's data: the per-step inputs [S, T, *shape[1:]], each sequence's initial state
    [S, *shape[1:]] per state input, and optional per-step labels [S, T, ...]. Sequences run `batch` at a time."""

    steps: dict[str, np.ndarray]
    initial: dict[str, np.ndarray]
    batch: int
    labels: np.ndarray | None = None

    @property
    def num_sequences(self) -> int:
        return next(iter(self.steps.values())).shape[0]

    @property
    def num_steps(self) -> int:
        return next(iter(self.steps.values())).shape[1]

    def groups(self) -> Iterator[slice]:
        """The sequences run together, `batch` at a time."""
        for lo in range(0, self.num_sequences, self.batch):
            yield slice(lo, lo + self.batch)

    def flat(self, fed: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """One sample per step, in [group, step, sequence] order; state inputs as fed at each step (`fed`:
        [S, T, ...] per state input), else the initial state at every step."""
        states = fed or {n: np.repeat(a[:, None], self.num_steps, axis=1) for n, a in self.initial.items()}
        return {name: _group_major(arr, self.batch) for name, arr in {**self.steps, **states}.items()}


def _group_major(arr: np.ndarray, batch: int) -> np.ndarray:
    """[S, T, ...] -> [S * T, ...] ordered (group of `batch` sequences, step, sequence in the group)."""
    s, t = arr.shape[:2]
    grouped = arr.reshape(s // batch, batch, t, *arr.shape[2:]).swapaxes(1, 2)
    return np.ascontiguousarray(grouped.reshape(s * t, *arr.shape[2:]))


@dataclass
class Dataset:
    """Arrays for every model input, sample axis first, already cast to the input dtypes (for a streaming
    model, one sample per step, and `sequences` holds the sequences themselves)."""

    role: str
    path: Path
    arrays: dict[str, np.ndarray]
    batch: int
    labels: np.ndarray | None = None
    checks: list[Check] = field(default_factory=list)
    sequences: Sequences | None = None

    def with_fed_states(self, fed: dict[str, np.ndarray]) -> Dataset:
        """The same data with the state inputs a model fed itself step by step ([S, T, ...] per state input)."""
        assert self.sequences is not None, "only streaming data has fed-back states"
        from dataclasses import replace

        return replace(self, arrays=self.sequences.flat(fed))

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
    if recipe.state and full.suffix.lower() != ".npz":
        raise DataError(f"{label}: a streaming model's sequences must be an .npz archive (see docs/validation.md)")
    source = read_source(SourceRequest(recipe, role, full))  # npz, folder or table: mobex.datasources
    raw = source.arrays
    found = source.found if source.found is not None else sorted(raw)

    checks: list[Check] = list(source.checks)
    ranges = preprocessing_ranges(recipe)
    batch = recipe.inputs[0].shape[0]
    states = {s.input for s in recipe.state}
    narrowed = _int32_targets(recipe)
    arrays: dict[str, np.ndarray] = {}
    constant: list[str] = []
    for spec in recipe.inputs:
        if spec.shape[0] != batch:
            raise DataError(f"{label}: all inputs must share the batch size {batch}; {spec.name!r} has {spec.shape[0]}")
        if spec.name in states and spec.name not in raw:
            checks.append(Check(f"{role}.{spec.name}.initial_state", True, "no array: every sequence starts at zeros"))
            continue
        if spec.name not in raw:
            raise DataError(
                f"{label}: no array named {spec.name!r} (found: {', '.join(found) or 'none'})",
                "name each array after the recipe input it feeds",
            )
        steps = bool(states) and spec.name not in states  # a streaming input: [S, T, *shape[1:]]
        arr = _shaped(label, spec, raw[spec.name], steps)
        arrays[spec.name] = _cast(label, spec.name, arr, spec.dtype)
        checks.append(Check(f"{role}.{spec.name}.shape", True, f"{list(arr.shape)} matches {spec.shape}"))
        cast = "" if arr.dtype == np.dtype(spec.dtype) else f", cast to {spec.dtype}"
        checks.append(Check(f"{role}.{spec.name}.dtype", True, f"{arr.dtype}{cast}"))
        checks.append(_finite_check(label, role, spec.name, arr))
        checks.append(_constant_check(role, spec.name, arr))
        if not checks[-1].passed:
            constant.append(spec.name)
        if spec.dtype == "int64" and narrowed:
            checks.append(_int32_check(label, role, spec.name, arrays[spec.name], narrowed))
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
        raise DataError(f"{label}: inputs have different sample (or sequence) counts: {counts}")
    n = next(iter(counts.values()))
    if n % batch:
        what = "sequences" if states else "samples"
        raise DataError(
            f"{label}: {n} {what} is not a multiple of the batch size {batch}",
            "trim the arrays or change the input's first dimension",
        )
    labels = source.labels
    if states:
        return _sequence_dataset(recipe, label, role, full, arrays, labels, checks)
    if labels is not None:
        labels = _check_labels(recipe, label, role, labels, n, checks)
    return Dataset(role=role, path=full, arrays=arrays, batch=batch, labels=labels, checks=checks)


def _shaped(label: str, spec, arr: np.ndarray, steps: bool) -> np.ndarray:  # noqa: ANN001 - InputSpec
    """The array, checked against the input's sample shape (with a step axis for a streaming input)."""
    want_tail = tuple(spec.shape[1:])
    lead = "N, T" if steps else "N"
    axes = 2 if steps else 1
    if arr.ndim != len(want_tail) + axes or tuple(arr.shape[axes:]) != want_tail:
        hint = "put the sample axis first; every sample must match the input shape after the batch axis"
        if steps:
            hint = "a streaming input holds sequences: [num_sequences, steps, *shape[1:]] (docs/validation.md)"
        raise DataError(
            f"{label}: array {spec.name!r} has shape {list(arr.shape)}, "
            f"expected [{', '.join([lead, *map(str, want_tail)])}] for input shape {spec.shape}",
            hint,
        )
    if arr.shape[0] == 0 or (steps and arr.shape[1] == 0):
        raise DataError(f"{label}: array {spec.name!r} is empty")
    return arr


def _sequence_dataset(
    recipe: Recipe,
    label: str,
    role: str,
    path: Path,
    arrays: dict[str, np.ndarray],
    labels: np.ndarray | None,
    checks: list[Check],
) -> Dataset:
    """A streaming model's data set: the sequences, and one sample per step (see the module docstring)."""
    states = [s.input for s in recipe.state]
    steps = {k: v for k, v in arrays.items() if k not in states}
    lengths = {k: v.shape[1] for k, v in steps.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"{label}: the streaming inputs have different step counts: {lengths}")
    s, t = next(iter(steps.values())).shape[:2]
    specs = {i.name: i for i in recipe.inputs}
    initial = {
        name: arrays.get(name, np.zeros((s, *specs[name].shape[1:]), dtype=specs[name].dtype)) for name in states
    }
    flat_labels = None
    if labels is not None:
        if labels.shape[:2] != (s, t):
            raise DataError(
                f"{label}: 'labels' has shape {list(labels.shape)}; a streaming model's labels are one per step: "
                f"[{s}, {t}, ...]"
            )
        flat_labels = _check_labels(recipe, label, role, labels.reshape(s * t, *labels.shape[2:]), s * t, checks)
    batch = recipe.inputs[0].shape[0]
    sequences = Sequences(steps, initial, batch, None if flat_labels is None else flat_labels.reshape(labels.shape))
    checks.append(Check(f"{role}.sequences", True, f"{s} sequences of {t} steps, run {batch} at a time"))
    return Dataset(role, path, sequences.flat(), batch, flat_labels, checks, sequences)


def _int32_targets(recipe: Recipe) -> list[str]:
    """Titles of the requested targets that store int64 inputs as int32."""
    titles = []
    for request in recipe.requests():
        info = plugins.target_info(request.target)
        if info.int64_as_int32 and (info.title or info.name) not in titles:
            titles.append(info.title or info.name)
    return titles


def _int32_check(label: str, role: str, name: str, arr: np.ndarray, targets: list[str]) -> Check:
    """int64 values a target will store as int32 must fit int32: refused here, not wrapped on the phone."""
    info = np.iinfo(np.int32)
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    who = " and ".join(targets)
    if lo < info.min or hi > info.max:
        raise DataError(
            f"{label}: array {name!r} holds int64 values in [{lo}, {hi}], outside int32 [{info.min}, {info.max}]; "
            f"{who} store this input as int32, so these ids would wrap around on the device",
            "remap the ids into int32 (e.g. a vocabulary index) or drop the variants of those targets",
        )
    return Check(
        f"{role}.{name}.int32_range", True, f"int64 values in [{lo}, {hi}] fit int32 ({who} store it as int32)"
    )


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
        if want.kind == "b" and arr.dtype.kind != "b" and not np.isin(arr, (0, 1)).all():
            raise DataError(f"{label}: array {name!r} feeds a bool input but holds values other than 0 and 1")
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
    # Runs after the finite check (no NaN), so "every value equals the first" is "min == max": two passes, no mask.
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if arr.size and lo == hi:
        return Check(f"{role}.{name}.varies", False, f"every value is {arr.flat[0]!r}: metrics on it say little")
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
    if lo <= amin and amax <= hi:  # the common case: no value outside, no per-value masks over the data
        return Check(check_name, True, f"{found} within [preprocessing].range [{lo:g}, {hi:g}]")
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
    check = _LABEL_CHECKS.get(recipe.model.task)
    if check is not None:
        checks.append(check(label, role, labels))
    return labels


def _detection_labels(label: str, role: str, labels: np.ndarray) -> Check:
    if labels.ndim != 3 or labels.shape[2] != 5 or labels.dtype.kind not in "iuf":
        raise DataError(
            f"{label}: detection 'labels' must be [N, M, 5] numbers (class, then the box in [detection].box_format; "
            f"rows with a negative class are padding), got {labels.dtype} {list(labels.shape)}"
        )
    classes = labels[..., 0]
    if not np.array_equal(classes, np.round(classes)):
        raise DataError(f"{label}: detection 'labels' column 0 (the class) must hold whole numbers")
    count = int(np.sum(classes >= 0))
    return Check(f"{role}.labels.boxes", True, f"{count} labelled boxes over {labels.shape[0]} samples")


def _segmentation_labels(label: str, role: str, labels: np.ndarray) -> Check:
    if labels.dtype.kind not in _INT_KINDS or labels.ndim < 2:
        raise DataError(
            f"{label}: segmentation 'labels' must be integer class masks [N, H, W], got {labels.dtype} "
            f"{list(labels.shape)}"
        )
    return Check(f"{role}.labels.masks", True, f"class values in [{labels.min()}, {labels.max()}]")


# Per task, the check of its labels' layout (classification's class indices are checked above).
_LABEL_CHECKS = {"detection": _detection_labels, "segmentation": _segmentation_labels}


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
