"""Deterministic bundle zips, and an extractor that refuses anything unsafe.

Writing follows reproducible-builds.org's archive advice: entries sorted by UTF-8 path, no
directory entries, one timestamp for all (SOURCE_DATE_EPOCH, clamped to the 1980-2107 range ZIP
can store), Unix create_system with fixed 0644 regular-file mode, no filesystem metadata (every
member goes through an explicit ZipInfo). Model files (and any non-text file) are STORED, and
their data is 64-byte aligned with a zipalign-style extra field (0xD935), so an app can mmap a
model straight out of the zip; json/txt files are deflated at a fixed level (same zlib, same bytes).

Extraction treats the zip as hostile: names are checked before any byte is written, members are
written into a private temporary directory, and only a fully extracted tree is renamed into place.
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
import tempfile
import time
import unicodedata
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from mobex.bounded import short
from mobex.bundle.manifest import check_relative_posix, resolve_source_date_epoch
from mobex.errors import UsageError, VerificationError
from mobex.files import regular_files

ZIP_MIN_EPOCH = 315532800  # 1980-01-01T00:00:00Z, the earliest time a zip entry can carry
ZIP_MAX_EPOCH = 4354819198  # 2107-12-31T23:59:58Z, the latest
ALIGNMENT = 64
DEFLATE_LEVEL = 9
_ALIGN_EXTRA_ID = 0xD935  # Android zipalign's alignment extra field
_TEXT_SUFFIXES = frozenset({".json", ".txt"})
_FILE_MODE = stat.S_IFREG | 0o644
_CHUNK = 1 << 20
_RATIO_MIN_BYTES = 1 << 20  # small members may compress very well without being a threat

MAX_ENTRIES = 10_000  # a bundle holds a handful of files; an .mlpackage a few dozen
GiB = 1 << 30


def zip_date_time(epoch: int | None) -> tuple[int, int, int, int, int, int]:
    """The fixed entry timestamp for a Unix time (None -> 1980-01-01), clamped to what ZIP can store."""
    epoch = ZIP_MIN_EPOCH if epoch is None else min(max(int(epoch), ZIP_MIN_EPOCH), ZIP_MAX_EPOCH)
    return tuple(time.gmtime(epoch)[:6])  # type: ignore[return-value]


def write_deterministic_zip(src_dir: Path, out_zip: Path, *, source_date_epoch: int | None) -> None:
    """Zip every regular file under `src_dir` into `out_zip`; same input bytes -> same zip bytes.

    The timestamp is `source_date_epoch`, else $SOURCE_DATE_EPOCH, else 1980-01-01. The zip is
    written to a temporary file next to `out_zip` and moved into place with os.replace.
    """
    src_dir = Path(src_dir)
    out_zip = Path(out_zip)
    if not src_dir.is_dir():
        raise UsageError(f"cannot zip {src_dir}: not a directory")
    date_time = zip_date_time(resolve_source_date_epoch(source_date_epoch))
    files = _regular_files(src_dir)
    if not files:
        raise UsageError(f"cannot zip {src_dir}: it holds no files")
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out_zip.parent, prefix=f".{out_zip.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w+b") as raw:
            with zipfile.ZipFile(raw, "w") as zf:
                for rel in files:
                    _add_member(zf, src_dir / rel, rel, date_time)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_zip)
    finally:
        tmp.unlink(missing_ok=True)


def safe_extract(
    zip_path: Path,
    dest: Path,
    *,
    max_total_bytes: int = 2 * GiB,
    max_ratio: float = 200.0,
    max_entries: int = MAX_ENTRIES,
) -> list[str]:
    """Extract a zip we do not trust into `dest` (new or empty); return the extracted file names.

    Refused with VerificationError before anything is written: absolute names, '..' / '.' / empty
    components, backslashes, ':' (drive letters), NUL or control characters, symlinks and other
    non-regular members, encrypted or exotically compressed members, duplicate names (also
    case-insensitively, as on macOS/Windows), a file that is also a directory, STORED members whose
    declared size differs from the stored data, declared total above `max_total_bytes`, members
    over 1 MiB expanding more than `max_ratio` times, a whole archive over 1 MiB expanding more than
    `max_ratio` times (many small members of zeros), more than `max_entries` members (counted from the
    end-of-central-directory record, before the member list is parsed). Messages name at most a few
    members. While extracting, a member that yields more or fewer bytes than declared, or fails its
    CRC, is refused.
    """
    zip_path = Path(zip_path)
    dest = Path(dest)
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise UsageError(f"cannot extract into {dest}: it must be a new or empty directory")
    if not zip_path.is_file():
        raise UsageError(f"bundle {zip_path} does not exist")
    check_entry_count(zip_path, max_entries)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise VerificationError(f"{zip_path.name} is not a valid zip file: {short(str(exc))}") from exc
    with zf:
        infos = zf.infolist()
        names = _check_members(infos, max_total_bytes=max_total_bytes, max_ratio=max_ratio, max_entries=max_entries)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.extract-"))
        try:
            for info in infos:
                _extract_member(zf, info, tmp)
            if dest.exists():
                dest.rmdir()
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return names


def check_entry_count(zip_path: Path, max_entries: int) -> None:
    """Refuse an archive that declares more than `max_entries` members before zipfile lists them all
    (the central directory of a million members takes a lot of memory to parse)."""
    try:
        with open(zip_path, "rb") as f:
            end = zipfile._EndRecData(f)  # the end-of-central-directory record (zip64 aware)
    except OSError:
        return  # ZipFile reports it
    if end is not None and end[zipfile._ECD_ENTRIES_TOTAL] > max_entries:
        raise VerificationError(
            f"zip declares {end[zipfile._ECD_ENTRIES_TOTAL]} entries, more than the limit of {max_entries}"
        )


def _regular_files(root: Path) -> list[str]:
    """Posix paths of all files under root, sorted by UTF-8 bytes; symlinks/special files refused."""
    out = regular_files(root)
    for rel in out:
        try:
            check_relative_posix(rel)
        except ValueError as exc:
            raise UsageError(f"cannot zip {rel}: {exc}") from exc
    return out


def _is_stored(rel: str) -> bool:
    return rel.startswith("model/") or PurePosixPath(rel).suffix.lower() not in _TEXT_SUFFIXES


def _align_extra(data_start: int) -> bytes:
    """zipalign-style extra field (id, size, uint16 alignment, zero padding) aligning the data."""
    pad = -(data_start + 6) % ALIGNMENT
    return struct.pack("<HHH", _ALIGN_EXTRA_ID, 2 + pad, ALIGNMENT) + b"\0" * pad


def _add_member(zf: zipfile.ZipFile, path: Path, rel: str, date_time: tuple[int, ...]) -> None:
    info = zipfile.ZipInfo(rel, date_time=date_time)
    info.create_system = 3  # Unix, so external_attr means a mode
    info.external_attr = _FILE_MODE << 16
    size = path.stat().st_size
    if not _is_stored(rel):
        zf.writestr(info, path.read_bytes(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=DEFLATE_LEVEL)
        return
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = size
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule for a zip64 local header
    header = 30 + len(rel.encode("utf-8")) + (20 if zip64 else 0)
    info.extra = _align_extra(zf.start_dir + header)
    written = 0
    with path.open("rb") as src, zf.open(info, "w", force_zip64=zip64) as dst:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            dst.write(chunk)
            written += len(chunk)
    if written != size:
        raise UsageError(f"{rel} changed size while being zipped ({size} -> {written} bytes)")


def _check_members(
    infos: list[zipfile.ZipInfo], *, max_total_bytes: int, max_ratio: float, max_entries: int
) -> list[str]:
    if len(infos) > max_entries:
        raise VerificationError(f"zip has {len(infos)} entries, more than the limit of {max_entries}")
    seen: set[str] = set()
    folded: dict[str, str] = {}
    files: list[str] = []
    dirs: set[str] = set()
    total = compressed = 0
    for info in infos:
        raw = info.orig_filename
        if "\x00" in raw:
            raise VerificationError(f"zip entry {short(raw)!r} has a NUL byte in its name")
        is_dir = raw.endswith("/")
        name = raw[:-1] if is_dir else raw
        try:
            check_relative_posix(name, "zip entry")
        except ValueError as exc:
            raise VerificationError(f"unsafe zip entry: {short(str(exc))}") from exc
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise VerificationError(f"zip entry {short(raw)!r} is a symlink; bundles hold regular files only")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR) or (kind == stat.S_IFDIR and not is_dir):
            raise VerificationError(f"zip entry {short(raw)!r} is not a regular file (mode {mode:o})")
        if raw in seen:
            raise VerificationError(f"zip entry {short(raw)!r} appears more than once")
        seen.add(raw)
        key = unicodedata.normalize("NFC", name).casefold()  # what macOS/Windows file systems collide
        if key in folded and folded[key] != raw:
            raise VerificationError(
                f"zip entries {short(folded[key])!r} and {short(raw)!r} differ only in case or normalization"
            )
        folded[key] = raw
        if info.flag_bits & 0x1:
            raise VerificationError(f"zip entry {short(raw)!r} is encrypted")
        if is_dir:
            dirs.add(name)
            continue
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise VerificationError(f"zip entry {short(raw)!r} uses unsupported compression {info.compress_type}")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise VerificationError(
                f"zip entry {short(raw)!r} declares {info.file_size} bytes but stores {info.compress_size}"
            )
        total += info.file_size
        compressed += info.compress_size
        if total > max_total_bytes:
            raise VerificationError(f"zip expands to more than {max_total_bytes} bytes; refusing to extract")
        if info.file_size > _RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
            raise VerificationError(
                f"zip entry {short(raw)!r} expands {info.file_size / max(info.compress_size, 1):.0f}x "
                f"(limit {max_ratio:.0f}x): looks like a zip bomb"
            )
        files.append(name)
    if total > _RATIO_MIN_BYTES and total > max_ratio * max(compressed, 1):
        raise VerificationError(
            f"zip expands {total / max(compressed, 1):.0f}x overall ({len(files)} files, {total} bytes from "
            f"{compressed}; limit {max_ratio:.0f}x): looks like a zip bomb"
        )
    parents = {p for f in files for p in _parents(f)}
    clash = sorted(parents & set(files))
    if clash:
        raise VerificationError(f"zip entry {short(clash[0])!r} is both a file and a directory")
    return sorted(files, key=lambda p: p.encode("utf-8"))


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, root: Path) -> None:
    name = info.orig_filename
    target = root.joinpath(*name.rstrip("/").split("/"))
    try:
        if name.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        root_real = os.path.realpath(root)
        if os.path.commonpath([os.path.realpath(target.parent), root_real]) != root_real:  # belt and braces
            raise VerificationError(f"zip entry {short(name)!r} would land outside the destination")
        written = 0
        with zf.open(info) as src, open(target, "xb") as dst:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                if written > info.file_size:
                    raise VerificationError(f"zip entry {short(name)!r} holds more data than its declared size")
                dst.write(chunk)
        if written != info.file_size:
            raise VerificationError(f"zip entry {short(name)!r} holds {written} bytes, {info.file_size} declared")
    except VerificationError:
        raise
    # zipfile raises NotImplementedError for an unknown compression method and RuntimeError for an
    # encrypted entry: both are bundles mobex did not write, refused like a corrupt one.
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError) as exc:
        raise VerificationError(f"zip entry {short(name)!r} is corrupt: {short(str(exc))}") from exc
    except OSError as exc:
        raise VerificationError(f"cannot extract zip entry {short(name)!r}: {exc.strerror or exc}") from exc
