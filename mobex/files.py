"""Small file helpers shared by the stages: hashing, listing a tree's regular files, atomic writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from mobex.errors import UsageError


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def regular_files(root: Path) -> list[str]:
    """Posix paths (relative to root) of every file under root, sorted by UTF-8 bytes.

    Symlinks and special files are refused: bundles and packages hold regular files only.
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            rel = full.relative_to(root).as_posix()
            if full.is_symlink():
                raise UsageError(f"{rel} in {root} is a symlink; bundles hold regular files only")
            if name in filenames and not full.is_file():
                raise UsageError(f"{rel} in {root} is not a regular file")
        out.extend(Path(dirpath, name).relative_to(root).as_posix() for name in filenames)
    return sorted(out, key=lambda p: p.encode("utf-8"))


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a whole file or nothing: temp file in the same folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
