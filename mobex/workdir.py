"""The hidden work folders a build or export keeps inside `--out`, and the cleanup of dead builds' folders.

A build works in `--out/.mobex-build-*` (an export in `.mobex-export-*`) and removes it at the end.
A build that is killed cannot, so each build holds an exclusive `flock` on a lock file inside its
folder for as long as it runs: the kernel drops the lock when the process dies, however it dies.
The next build in the same `--out` takes the lock of every such folder it finds; a lock it can take
belongs to a dead build, and that folder is removed. A folder without a lock file (made by an older
mobex, or a build killed in the instant between creating the folder and locking it) is removed once
it is older than LOCKLESS_GRACE_S. Where `fcntl` is missing (Windows), only that age rule applies.

`check_out_dir` refuses an `--out` that cannot become a folder before any work starts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from mobex.errors import UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

BUILD_PREFIX = ".mobex-build-"
EXPORT_PREFIX = ".mobex-export-"
PREFIXES = (BUILD_PREFIX, EXPORT_PREFIX)
LOCK_FILE = ".mobex-owner.lock"
LOCKLESS_GRACE_S = 3600.0

_held: dict[Path, int] = {}  # work folder -> open lock file descriptor, for as long as this process uses it


def check_out_dir(out_dir: Path) -> None:
    """Refuse an `--out` that is a file, lies under a file, or cannot be written, before any work starts."""
    out_dir = Path(out_dir)
    for path in (out_dir, *out_dir.parents):
        if path.is_symlink() and not path.exists():
            raise UsageError(f"--out {out_dir}: {path} is a broken symlink", "pass a folder (it is created if missing)")
        if not path.exists():
            continue
        if not path.is_dir():
            where = "exists and is not a folder" if path == out_dir else f"is under {path}, which is a file"
            raise UsageError(f"--out {out_dir} {where}", "pass a folder (it is created if missing)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"--out {out_dir}: {path} is not writable")
        return


def create(out_dir: Path, prefix: str = BUILD_PREFIX) -> Path:
    """A new locked work folder in `out_dir`, after removing the folders of dead builds there."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale(out_dir)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=out_dir))
    fd = os.open(folder / LOCK_FILE, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[folder] = fd
    return folder


def remove(folder: Path) -> None:
    """Delete a work folder made by `create` and release its lock."""
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    fd = _held.pop(folder, None)
    if fd is not None:
        os.close(fd)


def remove_stale(out_dir: Path) -> list[Path]:
    """Remove the work folders of builds that are no longer running; return what was removed."""
    removed = []
    try:
        children = list(Path(out_dir).iterdir())
    except OSError:
        return removed
    for folder in children:
        if not folder.name.startswith(PREFIXES) or folder.is_symlink() or not folder.is_dir() or folder in _held:
            continue
        if _remove_if_dead(folder):
            removed.append(folder)
    return removed


def _remove_if_dead(folder: Path) -> bool:
    lock = folder / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return _remove_if_old(folder)
    except OSError:
        return False
    try:
        if fcntl is None:
            return _remove_if_old(folder)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its build is running
        shutil.rmtree(folder, ignore_errors=True)  # holding the dead build's lock: no one else removes it at once
        return True
    finally:
        os.close(fd)


def _remove_if_old(folder: Path) -> bool:
    try:
        age = time.time() - folder.stat().st_mtime
    except OSError:
        return False
    if age < LOCKLESS_GRACE_S:
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True
