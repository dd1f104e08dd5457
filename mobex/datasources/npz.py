"""`.npz` archives: one array per input, named after it, plus an optional `labels` array (no pickles).

`read_npz` checks each member's .npy header before numpy reads any data: object arrays (pickles) are refused,
and the arrays may declare at most MAX_DATA_BYTES in total (2 GiB; $MOBEX_MAX_DATA_BYTES raises it), so a small
compressed file cannot expand into memory without bound.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np

from mobex.datasources.base import Check, RawData, SourceRequest
from mobex.errors import DataError

LABELS_KEY = "labels"
MAX_DATA_BYTES = 2 << 30  # declared array bytes per .npz file
MAX_DATA_BYTES_ENV = "MOBEX_MAX_DATA_BYTES"
MAX_ARRAYS = 10_000
_NPY_HEADER_MAX = 10_000


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


class NpzArchive:
    name = "npz"

    def claims(self, request: SourceRequest) -> bool:
        return request.path.is_file() and request.path.suffix.lower() == ".npz"

    def read(self, request: SourceRequest) -> RawData:
        raw = read_npz(request.path, request.label)
        found = sorted(raw)
        labels = raw.pop(LABELS_KEY, None)
        names = {i.name for i in request.recipe.inputs}
        checks = []
        unknown = sorted(set(raw) - names)
        if unknown:
            checks.append(
                Check(f"{request.role}.extra_arrays", True, f"ignored arrays not named after an input: {unknown}")
            )
        return RawData({k: v for k, v in raw.items() if k in names}, labels, checks, found=found)
