"""File-system helpers for the registry: reads that never follow symlinks, atomic writes, a lock.

Reading (server, `pull --from DIR`): a registry-relative path is opened one component at a time
with `O_NOFOLLOW` relative to the parent's descriptor, so a symlink anywhere inside the registry
(even one swapped in during the request) is refused instead of followed; the final object must be
a regular file. The registry root itself may be a symlink: that is the operator's choice.

Writing (publish): directories are created component by component and refused if any is a symlink
or not a directory; files appear by `os.replace`/`os.link` of a fully written, fsynced temporary
file, so a reader sees the old bytes or the new bytes, never a mix.

Locking: one `fcntl.flock` on `<registry>/.mobex-registry.lock` serializes publishers on one
machine (or on a file system with working flock, e.g. local disks; not every network FS).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from mobex.errors import MobexError, UsageError, VerificationError
from mobex.registry.layout import LOCK_FILE

_CHUNK = 1 << 20


class NotFound(MobexError):
    """A registry file that does not exist (the caller decides whether that is an error)."""

    exit_code = 2


def open_nofollow(root: Path, rel: str) -> int:
    """An O_RDONLY descriptor for regular file `root/rel`; symlinks, '..' and non-files refused.

    Raises NotFound if a component is missing, VerificationError if a component is a symlink or
    the file is not a regular file.
    """
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") for p in parts) or "\x00" in rel or "\\" in rel:
        raise VerificationError(f"registry path {rel!r} is not a plain relative path")
    flags_dir = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NotFound(f"registry {root} does not exist") from exc
    except NotADirectoryError as exc:
        raise UsageError(f"registry {root} is not a directory") from exc
    try:
        for part in parts[:-1]:
            nxt = _open_at(part, flags_dir, fd, rel)
            os.close(fd)
            fd = nxt
        file_fd = _open_at(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, fd, rel)
    finally:
        os.close(fd)
    st = os.fstat(file_fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(file_fd)
        raise VerificationError(f"registry path {rel} is not a regular file")
    return file_fd


def _open_at(name: str, flags: int, dir_fd: int, rel: str) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError as exc:
        raise NotFound(f"{rel} is not in the registry") from exc
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR):
            try:
                is_link = stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
            except OSError:
                is_link = False
            if is_link or exc.errno != errno.ENOTDIR:
                raise VerificationError(f"registry path {rel} goes through a symlink; refusing to follow it") from exc
            raise NotFound(f"{rel} is not in the registry") from exc
        raise VerificationError(f"cannot open {rel} in the registry: {exc.strerror}") from exc


def read_file(root: Path, rel: str, max_bytes: int) -> bytes:
    """The bytes of registry file `rel` (no symlinks), refusing files larger than `max_bytes`."""
    fd = open_nofollow(root, rel)
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise VerificationError(f"{rel} is larger than the {max_bytes} bytes allowed")
    return data


def ensure_dir(root: Path, rel_dir: str) -> Path:
    """Create `root/rel_dir` component by component; refuse symlinks and non-directories on the way."""
    current = Path(root)
    current.mkdir(parents=True, exist_ok=True)
    for part in [p for p in rel_dir.split("/") if p]:
        if part in (".", ".."):
            raise UsageError(f"registry directory {rel_dir!r} has a '.' or '..' component")
        current = current / part
        try:
            os.mkdir(current, 0o755)
        except FileExistsError:
            pass
        st = os.lstat(current)
        if stat.S_ISLNK(st.st_mode):
            raise VerificationError(f"{current} is a symlink; a registry holds plain directories and files only")
        if not stat.S_ISDIR(st.st_mode):
            raise VerificationError(f"{current} is not a directory")
    return current


def check_no_symlink(path: Path) -> None:
    """Refuse an existing symlink at `path` (a target the publisher is about to replace)."""
    if path.is_symlink():
        raise VerificationError(f"{path} is a symlink; a registry holds plain files only")


def write_temp(directory: Path, data: bytes | Path, *, mode: int = 0o644, prefix: str = "tmp") -> Path:
    """Write `data` (bytes, or a file to copy) to a new fsynced temporary file in `directory`."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=f".{prefix}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            if isinstance(data, bytes | bytearray):
                out.write(data)
            else:
                with open(data, "rb") as src:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically (temp file in the same folder, fsync, os.replace)."""
    path = Path(path)
    check_no_symlink(path)
    tmp = write_temp(path.parent, data, mode=mode, prefix=path.name)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (best effort: some file systems refuse to fsync directories)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def locked(directory: Path, *, timeout: float = 120.0, name: str = LOCK_FILE) -> Iterator[None]:
    """Hold an exclusive flock on `directory/name` for the block (waits up to `timeout` seconds)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock_path = directory / name
    check_no_symlink(lock_path)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UsageError(
                        f"{lock_path} is locked by another process for more than {timeout:.0f} s",
                        hint="another publish, promote or pull is running; retry when it ends",
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing releases the lock
