"""Inputs against the bundle's I/O contract: names, shapes, dtypes, finiteness, the preprocessing range.

A request carries N samples of every input: an array of shape [N, *sample shape], where the sample
shape is the manifest shape without its first (batch) axis and 1 <= N <= `max_samples`. Every check
raises InputError with the HTTP status and a message that says what is wrong and what the model
takes, so a client can fix its request without reading the server's code.

Quantized inputs (int8 I/O) take float values, which the runtime quantizes with the manifest's
scale and zero point, as mobex's runners and `mobex drift` do.
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from mobex.bundle.manifest import Manifest

DEFAULT_MAX_SAMPLES = 256
MAX_NPZ_MEMBERS = 64
RANGE_TOLERANCE = 1e-6  # relative to the range's width: float rounding of a client's preprocessing


class InputError(Exception):
    """A request the contract refuses; `status` is the HTTP status (400, 413, 415 or 422)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class TensorContract:
    name: str
    shape: tuple[int, ...]  # as the model takes it, batch axis first
    dtype: str  # the model's dtype
    quantized: bool

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def request_dtype(self) -> np.dtype:
        """What the runner is fed: float32 for float and quantized inputs, else the model's dtype."""
        dtype = np.dtype(self.dtype)
        return np.dtype(np.float32) if dtype.kind == "f" or self.quantized else dtype

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.sample_shape)
        return f"[N{', ' + dims if dims else ''}] {self.request_dtype.name}"


@dataclass(frozen=True)
class IOContract:
    """What the model takes and returns, read from the signed manifest."""

    inputs: tuple[TensorContract, ...]
    outputs: tuple[TensorContract, ...]
    value_range: tuple[float, float] | None
    max_samples: int

    @classmethod
    def from_manifest(cls, manifest: Manifest, max_samples: int = DEFAULT_MAX_SAMPLES) -> IOContract:
        def specs(key: str) -> tuple[TensorContract, ...]:
            return tuple(
                TensorContract(s["name"], tuple(int(d) for d in s["shape"]), s["dtype"], bool(s.get("quantization")))
                for s in manifest.model[key]
            )

        return cls(specs("inputs"), specs("outputs"), _value_range(manifest.preprocessing), max_samples)

    @property
    def batch(self) -> int:
        """Samples the model takes per invocation (the manifest's first input dimension)."""
        return max(1, self.inputs[0].shape[0]) if self.inputs[0].shape else 1

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def check_json(self, inputs: Any) -> tuple[dict[str, np.ndarray], int]:
        """`{"<input name>": nested list}` -> arrays the runner takes, and the sample count N."""
        if not isinstance(inputs, dict):
            raise InputError(422, f'"inputs" must be an object {{"<input name>": nested list}}; the model takes '
                                  f"{self._takes()}")  # fmt: skip
        self._check_names(inputs)
        arrays = {}
        for spec in self.inputs:
            arrays[spec.name] = self._from_json(spec, inputs[spec.name])
        return arrays, self._sample_count(arrays)

    def check_npz(self, body: bytes, max_bytes: int) -> tuple[dict[str, np.ndarray], int]:
        """An .npz body (one array per input, sample axis first) -> arrays the runner takes, and N."""
        raw = read_npz(body, max_bytes)
        self._check_names(raw)
        arrays = {}
        for spec in self.inputs:
            arrays[spec.name] = self._from_array(spec, raw[spec.name])
        return arrays, self._sample_count(arrays)

    # --- checks ------------------------------------------------------------------------------

    def _takes(self) -> str:
        return ", ".join(f"{t.name} {t.describe()}" for t in self.inputs)

    def _check_names(self, given: dict) -> None:
        missing = [n for n in self.input_names if n not in given]
        if missing:
            raise InputError(422, f"missing input {missing[0]!r}; the model takes {self._takes()}")
        unknown = sorted(str(n) for n in given if n not in self.input_names)
        if unknown:
            raise InputError(422, f"unknown input {unknown[0][:64]!r}; the model takes {self._takes()}")

    def _from_json(self, spec: TensorContract, value: Any) -> np.ndarray:
        try:
            arr = np.asarray(value)
        except (ValueError, OverflowError) as exc:
            raise InputError(422, f"input {spec.name!r} is not a rectangular array of numbers: {exc}") from None
        if arr.dtype.kind not in "biuf":
            raise InputError(422, f"input {spec.name!r} must hold numbers only (it has {_kind_name(arr)}); "
                                  f"the model takes {spec.describe()}")  # fmt: skip
        if arr.dtype.kind != "b" and _has_bool(value, arr.ndim):  # numpy reads [true, 0.5] as [1.0, 0.5]
            raise InputError(422, f"input {spec.name!r} mixes true/false with numbers; the model takes "
                                  f"{spec.describe()}")  # fmt: skip
        return self._checked(spec, arr, from_json=True)

    def _from_array(self, spec: TensorContract, arr: np.ndarray) -> np.ndarray:
        return self._checked(spec, arr, from_json=False)

    def _checked(self, spec: TensorContract, arr: np.ndarray, *, from_json: bool) -> np.ndarray:
        want = spec.request_dtype
        if arr.ndim != len(spec.shape) or tuple(arr.shape[1:]) != spec.sample_shape:
            raise InputError(422, f"input {spec.name!r} has shape {list(arr.shape)}; the model takes "
                                  f"{spec.describe()} (N samples, 1 <= N <= {self.max_samples})")  # fmt: skip
        if not 1 <= arr.shape[0] <= self.max_samples:
            raise InputError(422, f"input {spec.name!r} has {arr.shape[0]} samples; send 1 to {self.max_samples} "
                                  "per request")  # fmt: skip
        _check_dtype(spec, arr, want, from_json=from_json)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InputError(422, f"input {spec.name!r} contains NaN or infinity; send finite numbers")
        with np.errstate(over="ignore"):  # 1e300 as float32 is inf: refused just below
            out = arr.astype(want, copy=False)
        if want.kind == "f" and not np.isfinite(out).all():
            raise InputError(422, f"input {spec.name!r} has values too large for {want.name}")
        if want.kind == "f" and self.value_range is not None:
            self._check_range(spec, out)
        return np.ascontiguousarray(out)

    def _check_range(self, spec: TensorContract, arr: np.ndarray) -> None:
        lo, hi = self.value_range  # type: ignore[misc]
        slack = RANGE_TOLERANCE * max(hi - lo, 1e-12)
        got_lo, got_hi = float(arr.min()), float(arr.max())
        if got_lo < lo - slack or got_hi > hi + slack:
            raise InputError(422, f"input {spec.name!r} has values in [{got_lo:.6g}, {got_hi:.6g}], outside the "
                                  f"model's preprocessing range [{lo:g}, {hi:g}]; preprocess as the manifest "
                                  "says")  # fmt: skip

    def _sample_count(self, arrays: dict[str, np.ndarray]) -> int:
        counts = {name: int(a.shape[0]) for name, a in arrays.items()}
        if len(set(counts.values())) > 1:
            raise InputError(422, f"inputs have different sample counts {counts}; send the same N for each")
        return next(iter(counts.values()))


def _check_dtype(spec: TensorContract, arr: np.ndarray, want: np.dtype, *, from_json: bool) -> None:
    kind = arr.dtype.kind
    if want.kind == "f":
        ok = kind == "f" or (from_json and kind in "iu")  # JSON writes 1.0 as 1
    elif want.kind == "b":
        ok = kind == "b"
    else:
        ok = kind in "iu" and _fits(arr, want)
        if from_json and kind == "f" and np.all(np.mod(arr, 1) == 0):
            ok = _fits(arr, want)
    if not ok:
        raise InputError(422, f"input {spec.name!r} has {_kind_name(arr)} values; the model takes "
                              f"{spec.describe()}")  # fmt: skip


def _has_bool(value: Any, ndim: int) -> bool:
    """Whether a rectangular nested list of `ndim` levels has a JSON true/false among its numbers."""
    if ndim == 0:
        return type(value) is bool
    rows = [value]
    for _ in range(ndim - 1):
        rows = [x for row in rows for x in row]
    return any(type(v) is bool for row in rows for v in row)


def _fits(arr: np.ndarray, want: np.dtype) -> bool:
    if arr.size == 0:
        return True
    info = np.iinfo(want)
    return bool(info.min <= arr.min() and arr.max() <= info.max)


def _kind_name(arr: np.ndarray) -> str:
    names = {"b": "boolean", "i": "integer", "u": "integer", "f": "floating-point", "U": "string", "S": "bytes"}
    return f"{names.get(arr.dtype.kind, 'non-numeric')} ({arr.dtype.name})"


def _value_range(preprocessing: dict) -> tuple[float, float] | None:
    """`[preprocessing].range = [lo, hi]`, when the manifest gives a finite one."""
    value = preprocessing.get("range")
    if not (isinstance(value, list) and len(value) == 2):
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    lo, hi = float(value[0]), float(value[1])
    return (lo, hi) if lo < hi else None


def read_npz(body: bytes, max_bytes: int) -> dict[str, np.ndarray]:
    """Arrays of an .npz body: no pickles, at most MAX_NPZ_MEMBERS members, at most `max_bytes` unpacked."""
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_NPZ_MEMBERS:
                raise InputError(422, f"the .npz holds {len(infos)} arrays; at most {MAX_NPZ_MEMBERS}")
            total = sum(i.file_size for i in infos)
            if total > max_bytes:
                raise InputError(413, f"the .npz unpacks to {total} bytes, over the {max_bytes}-byte limit")
            arrays = {}
            for info in infos:
                if not info.filename.endswith(".npy") or "/" in info.filename:
                    raise InputError(422, f"the .npz member {info.filename[:64]!r} is not a top-level .npy array")
                with zf.open(info) as member:
                    arrays[info.filename.removesuffix(".npy")] = np.lib.format.read_array(member, allow_pickle=False)
            return arrays
    except InputError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise InputError(400, f"the body is not a readable .npz of numeric arrays (numpy.savez): {exc}") from None
