"""A cache of decoded data: the second build of the same files with the same preprocessing reads arrays.

The key is a SHA-256 over the source's name and version, every file's path (relative to the data
path), size and modification time, the preprocessing contract, the inputs, the labels file and the
`[data]` options. Any change to a file, the contract or the inputs gives another key. Entries are
.npz archives (read with allow_pickle=False) written atomically, so concurrent builds (the export
workers) never read half an entry. The folder is `$MOBEX_CACHE_DIR`, else `$XDG_CACHE_HOME/mobex`,
else `~/.cache/mobex`, under `data/`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from mobex.datasources.base import Check, DecodingSource, RawData, SourceRequest

_INPUT_PREFIX = "input:"
_LABELS = "labels"
_CHECKS = "checks"


def cache_dir() -> Path:
    explicit = os.environ.get("MOBEX_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mobex"


def cache_key(source: DecodingSource, request: SourceRequest, files: list[Path]) -> str:
    recipe = request.recipe
    listing = []
    for f in files:
        st = f.stat()
        rel = f.relative_to(request.path).as_posix() if f != request.path else f.name
        listing.append([rel, st.st_size, st.st_mtime_ns])
    options = request.options
    material = {
        "source": [source.name, source.version],
        "files": listing,
        "preprocessing": recipe.preprocessing.record(),
        "inputs": [i.model_dump(mode="json", exclude={"description"}) for i in recipe.inputs],
        "task": recipe.model.task,
        "labels": recipe.labels(),
        "options": {k: getattr(options, k) for k in ("skip_bad_files", "max_samples", "seed", "label_column")},
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def read_cached(source: DecodingSource, request: SourceRequest) -> RawData:
    """`source.decode` through the cache (when `[data].cache` is on)."""
    files = source.inventory(request)
    if not request.options.cache:
        return source.decode(request, files)
    key = cache_key(source, request, files)
    entry = cache_dir() / "data" / f"{key}.npz"
    hit = _load(entry, request)
    if hit is not None:
        return hit
    raw = source.decode(request, files)
    _store(entry, raw)
    raw.checks.append(Check(f"{request.role}.cache", True, f"decoded and cached as {entry.name[:16]}"))
    return raw


def _load(entry: Path, request: SourceRequest) -> RawData | None:
    try:
        with np.load(entry, allow_pickle=False) as npz:
            arrays = {k.removeprefix(_INPUT_PREFIX): npz[k] for k in npz.files if k.startswith(_INPUT_PREFIX)}
            labels = npz[_LABELS] if _LABELS in npz.files else None
            checks = [Check(**c) for c in json.loads(npz[_CHECKS].tobytes().decode())]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or unreadable: decode again (and overwrite it)
    checks.append(Check(f"{request.role}.cache", True, f"read from the cache ({entry.name[:16]}): no decoding"))
    return RawData(arrays, labels, checks)


def _store(entry: Path, raw: RawData) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    payload = {_INPUT_PREFIX + k: v for k, v in raw.arrays.items()}
    if raw.labels is not None:
        payload[_LABELS] = raw.labels
    payload[_CHECKS] = np.frombuffer(json.dumps([c.to_dict() for c in raw.checks]).encode(), np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=f".{entry.stem[:16]}.", suffix=".tmp", dir=entry.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
        os.replace(tmp, entry)
    except OSError:
        Path(tmp).unlink(missing_ok=True)  # a cache that cannot be written is not an error: the data is decoded
