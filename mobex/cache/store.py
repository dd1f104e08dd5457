"""The on-disk, content-addressed store behind the build cache: entries, locks, verification, pruning.

Layout under the cache folder (`$MOBEX_CACHE_DIR`, else `$XDG_CACHE_HOME/mobex`, else `~/.cache/mobex`, the
folder mobex.datasources keeps decoded data in, under `data/`):

    builds/.lock                        shared by every reader and writer, exclusive while pruning
    builds/v1/<kind>/<key[:2]>/<key>/   one entry: meta.json and files/...
    builds/v1/locks/<key>.lock          exclusive while an entry is published or replaced
    builds/v1/tmp/                      entries being written (renamed into place when complete)

`meta.json` holds the entry's payload (JSON), the SHA-256 of the payload's canonical JSON and the SHA-256
and size of every file. Reading an entry checks all of them (files are hashed while they are copied out),
so a truncated, edited or bit-flipped entry is detected, removed and reported as a miss: the caller
rebuilds it and never sees its contents. An entry is written completely in `tmp/` and then renamed into
place, so a concurrent reader sees a whole entry or none. Payloads are JSON and arrays .npz read with
`allow_pickle=False`: nothing in the cache is ever unpickled.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobex.bounded import loads_json
from mobex.errors import UsageError
from mobex.files import sha256_file, write_atomic

LAYOUT = "v1"
_KEY = re.compile(r"^[0-9a-f]{64}$")
_KIND = re.compile(r"^[a-z][a-z0-9-]*$")
_STALE_TMP_SECONDS = 24 * 3600
_NOT_KINDS = ("tmp", "locks", "filehash")
MEMO_MIN_BYTES = 1 << 20  # smaller files are hashed every time (faster than reading a memo is worth)
DEFAULT_MAX_SIZE = "5GiB"  # automatic pruning after a build ($MOBEX_CACHE_MAX_SIZE; "0" or "none": off)


def cache_root() -> Path:
    """The cache folder mobex shares between its caches (decoded data, builds)."""
    from mobex.datasources.cache import cache_dir

    return cache_dir()


@dataclass(frozen=True)
class EntryInfo:
    kind: str  # "export", "validation", "reference", or "data" (mobex.datasources' decoded data)
    key: str
    path: Path
    size_bytes: int
    last_used: float  # seconds since the epoch


@dataclass(frozen=True)
class PruneResult:
    removed: int
    freed_bytes: int
    kept: int
    size_bytes: int  # what the cache holds afterwards


class CacheStore:
    """Entries of several kinds in one folder; every method is safe to call from concurrent processes."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root()
        self.builds = self.root / "builds"
        self.base = self.builds / LAYOUT
        self.corrupted: list[str] = []  # entries this store found corrupt (and removed), for the report

    # -- locks ---------------------------------------------------------------------------------

    @contextmanager
    def _lock(self, path: Path, exclusive: bool) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _using(self) -> Any:
        """Held (shared) while an entry is read or written; `prune` takes it exclusively."""
        return self._lock(self.builds / ".lock", exclusive=False)

    def _key_lock(self, key: str) -> Any:
        return self._lock(self.base / "locks" / f"{key}.lock", exclusive=True)

    def entry_path(self, kind: str, key: str) -> Path:
        if not _KIND.match(kind) or not _KEY.match(key):
            raise ValueError(f"bad cache entry name {kind}/{key}")
        return self.base / kind / key[:2] / key

    # -- reading -------------------------------------------------------------------------------

    def get(self, kind: str, key: str, restore_to: Path | None = None) -> tuple[dict, dict[str, bytes]] | None:
        """(payload, files) of a verified entry, or None when it is absent or was corrupt (then it is removed).

        With `restore_to`, the entry's files are copied (and verified) into that folder and `files` is empty;
        otherwise their bytes are returned. A corrupt entry leaves nothing behind in `restore_to`.
        """
        entry = self.entry_path(kind, key)
        with self._using():
            if not (entry / "meta.json").is_file():
                return None
            try:
                payload, files = self._verified(entry, key, restore_to)
            except _Corrupt as exc:
                if restore_to is not None:
                    shutil.rmtree(restore_to, ignore_errors=True)
                self._discard(entry, key)
                self.corrupted.append(f"{kind}/{key[:16]}: {exc}")
                return None
            _touch(entry / "meta.json")
        return payload, files

    def _verified(self, entry: Path, key: str, restore_to: Path | None) -> tuple[dict, dict[str, bytes]]:
        try:
            meta = loads_json((entry / "meta.json").read_bytes(), "a cache entry's meta.json")
            payload, listed = meta["payload"], meta["files"]
            ok = meta["key"] == key and meta["payload_sha256"] == _payload_sha256(payload)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise _Corrupt(f"unreadable meta.json ({type(exc).__name__})") from None
        if not ok:
            raise _Corrupt("meta.json does not match its own hash")
        out: dict[str, bytes] = {}
        for rel, want in sorted(listed.items()):
            source = entry / "files" / _safe_relative(rel)
            try:
                if restore_to is None:
                    data = source.read_bytes()
                    got = (hashlib.sha256(data).hexdigest(), len(data))
                    out[rel] = data
                else:
                    got = _restore_hashing(source, restore_to / rel)
            except OSError as exc:
                raise _Corrupt(f"{rel}: {exc.strerror or exc}") from None
            if got != (want["sha256"], want["size"]):
                raise _Corrupt(f"{rel}: content does not match its recorded SHA-256")
        return payload, out

    def _discard(self, entry: Path, key: str) -> None:
        """Take a corrupt entry out of the store (renamed away first, so no reader ever sees half of it)."""
        with self._key_lock(key):
            if entry.exists():
                trash = self.base / "tmp" / f"corrupt-{key[:16]}-{uuid.uuid4().hex}"
                trash.parent.mkdir(parents=True, exist_ok=True)
                os.rename(entry, trash)
                shutil.rmtree(trash, ignore_errors=True)

    # -- writing -------------------------------------------------------------------------------

    def put(self, kind: str, key: str, payload: dict, files: dict[str, Path | bytes] | None = None) -> bool:
        """Publish an entry (payload JSON, files by relative path: a file, a folder or bytes). False when an
        intact entry was already there (a concurrent build published the same key first)."""
        entry = self.entry_path(kind, key)
        tmp = self.base / "tmp" / f"{key[:16]}-{os.getpid()}-{uuid.uuid4().hex}"
        with self._using():
            try:
                tmp.mkdir(parents=True)
                listed = {}
                for rel, src in sorted((files or {}).items()):
                    listed.update(_write_files(tmp / "files", rel, src))
                meta = {
                    "key": key,
                    "kind": kind,
                    "created": time.time(),
                    "payload": payload,
                    "payload_sha256": _payload_sha256(payload),
                    "files": listed,
                }
                (tmp / "meta.json").write_text(json.dumps(meta))  # key order kept: reports keep theirs
                with self._key_lock(key):
                    if (entry / "meta.json").is_file():
                        try:
                            self._verified(entry, key, None)
                            return False
                        except _Corrupt:
                            shutil.rmtree(entry, ignore_errors=True)
                    entry.parent.mkdir(parents=True, exist_ok=True)
                    os.rename(tmp, entry)
                    return True
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    # -- file hashes -----------------------------------------------------------------------------

    def file_sha256(self, path: Path) -> str:
        """SHA-256 of a file's bytes, remembered for large files by (device, inode, size, mtime, ctime), as git's
        index does: writing a file sets its ctime, and no utime call can set it back, so a file whose stamp is
        unchanged has unchanged bytes."""
        path = Path(path).resolve()
        st = path.stat()
        if st.st_size < MEMO_MIN_BYTES:
            return sha256_file(path)
        stamp = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        memo = self.base / "filehash" / f"{hashlib.sha256(str(path).encode()).hexdigest()}.json"
        try:
            doc = loads_json(memo.read_bytes(), "a remembered file hash")
            if doc["path"] == str(path) and doc["stamp"] == stamp and _KEY.match(doc["sha256"]):
                return doc["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no memo, an unreadable one or one for another stamp: hash the file again below
        sha = sha256_file(path)
        try:
            write_atomic(memo, json.dumps({"path": str(path), "stamp": stamp, "sha256": sha}).encode())
        except OSError:
            pass  # not remembered: hashed again next time
        return sha

    # -- listing and pruning -------------------------------------------------------------------

    def entries(self) -> list[EntryInfo]:
        """Every entry of the build cache and every decoded-data file, oldest use first."""
        out = []
        if self.base.is_dir():
            for kind_dir in sorted(p for p in self.base.iterdir() if p.is_dir() and p.name not in _NOT_KINDS):
                for entry in kind_dir.glob("??/*"):
                    meta = entry / "meta.json"
                    if meta.is_file():
                        size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
                        out.append(EntryInfo(kind_dir.name, entry.name, entry, size, meta.stat().st_mtime))
        data = self.root / "data"
        if data.is_dir():
            for path in data.glob("*.npz"):
                st = path.stat()
                out.append(EntryInfo("data", path.stem, path, st.st_size, st.st_mtime))
        return sorted(out, key=lambda e: (e.last_used, e.kind, e.key))

    def prune(self, max_bytes: int) -> PruneResult:
        """Remove least recently used entries until the cache holds at most `max_bytes` (and stale temp files)."""
        with self._lock(self.builds / ".lock", exclusive=True):
            self._remove_stale_tmp()
            entries = self.entries()
            total = sum(e.size_bytes for e in entries)
            removed = freed = 0
            for e in entries:
                if total <= max_bytes:
                    break
                if e.path.is_dir():
                    shutil.rmtree(e.path, ignore_errors=True)
                    (self.base / "locks" / f"{e.key}.lock").unlink(missing_ok=True)
                else:
                    e.path.unlink(missing_ok=True)
                total -= e.size_bytes
                freed += e.size_bytes
                removed += 1
            return PruneResult(removed, freed, len(entries) - removed, total)

    def _remove_stale_tmp(self) -> None:
        """Temp folders and files a killed build left behind (older than a day)."""
        now = time.time()
        stale = [*(self.base / "tmp").glob("*"), *(self.root / "data").glob(".*.tmp")]
        for path in stale:
            try:
                if now - path.stat().st_mtime > _STALE_TMP_SECONDS:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            except OSError:
                continue

    def info(self) -> dict[str, Any]:
        """Where the cache is, and entries and bytes per kind."""
        kinds: dict[str, dict[str, int]] = {}
        for e in self.entries():
            k = kinds.setdefault(e.kind, {"entries": 0, "size_bytes": 0})
            k["entries"] += 1
            k["size_bytes"] += e.size_bytes
        return {
            "path": str(self.root),
            "kinds": kinds,
            "entries": sum(k["entries"] for k in kinds.values()),
            "size_bytes": sum(k["size_bytes"] for k in kinds.values()),
        }


class _Corrupt(Exception):
    """An unreadable entry, or one whose payload or files do not match their recorded SHA-256: it is removed and
    rebuilt, never used."""


def _payload_sha256(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _safe_relative(rel: str) -> Path:
    path = Path(rel)
    if path.is_absolute() or ".." in path.parts:
        raise _Corrupt(f"entry lists a path outside itself: {rel!r}")
    return path


def _touch(path: Path) -> None:
    try:
        os.utime(path)  # the entry's last use, for least-recently-used pruning
    except OSError:
        pass  # a read-only cache still serves the entry; pruning then sees its older use time


def _copy_hashing(source: Path, dest: Path) -> tuple[str, int]:
    """Copy a file and return the SHA-256 and size of what was read."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    size = 0
    with source.open("rb") as src, dest.open("wb") as out:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            h.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _restore_hashing(source: Path, dest: Path) -> tuple[str, int]:
    """Put an entry's file at `dest` and return the SHA-256 and size of its bytes: a hard link when the cache
    and `dest` share a filesystem (no bytes written; both names stay valid if the other is removed, and
    nothing writes to a restored model in place), else a copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError:
        return _copy_hashing(source, dest)
    h = hashlib.sha256()
    size = 0
    with dest.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _write_files(root: Path, rel: str, src: Path | bytes) -> dict[str, dict[str, Any]]:
    """Copy `src` (bytes, a file or a folder of regular files) to root/rel; {relative path: sha256, size}."""
    _safe_relative(rel)
    if isinstance(src, bytes):
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src)
        return {rel: {"sha256": hashlib.sha256(src).hexdigest(), "size": len(src)}}
    src = Path(src)
    if src.is_symlink():
        raise ValueError(f"{src} is a symlink: the cache stores regular files only")
    if src.is_file():
        sha, size = _copy_hashing(src, root / rel)
        return {rel: {"sha256": sha, "size": size}}
    out = {}
    for file in sorted(p for p in src.rglob("*") if p.is_file() or p.is_symlink()):
        if file.is_symlink():
            raise ValueError(f"{file} is a symlink: the cache stores regular files only")
        name = f"{rel}/{file.relative_to(src).as_posix()}"
        sha, size = _copy_hashing(file, root / name)
        out[name] = {"sha256": sha, "size": size}
    return out


_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def parse_size(text: str) -> int:
    """'500M', '2G', '1.5GiB', '10 KB', '123' -> bytes (K/M/G/T are powers of 1000, KiB/MiB/... of 1024)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(i?)b?\s*", text.lower())
    if not match:
        raise UsageError(f"size {text!r} is not a size", "write bytes or a number with K, M, G or T (e.g. 2G, 500MiB)")
    number, unit, binary = match.groups()
    factor = 1024 ** "_kmgt".index(unit) if binary and unit else _UNITS[unit]
    return int(float(number) * factor)


def auto_prune_limit() -> int | None:
    """The size a build prunes the cache back to ($MOBEX_CACHE_MAX_SIZE, default 5GiB), or None when off."""
    text = os.environ.get("MOBEX_CACHE_MAX_SIZE", DEFAULT_MAX_SIZE).strip().lower()
    return None if text in ("0", "none", "off", "") else parse_size(text)
