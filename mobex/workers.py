"""Worker processes that die with the build that started them.

`mobex build` exports Android and iOS in worker processes. If the build is killed (`kill -9`, an
OOM kill, a CI timeout), nothing tells the workers: they would keep converting and writing into a
build folder nobody will read. `die_with_parent`, run as the pool's initializer in each worker, ties
the worker's life to its parent:

- on Linux, `prctl(PR_SET_PDEATHSIG, SIGKILL)`: the kernel kills the worker the moment the parent
  dies. (Strictly, when the parent *thread* that started the worker ends; the pool starts its
  workers from the thread that submits the work and waits for it, so that thread outlives them.)
- everywhere, a daemon thread that checks every POLL_S seconds whether the parent is still the
  worker's parent (`os.getppid()` changes when an orphan is re-parented), for systems without
  prctl; it also covers a parent that died before prctl was in place.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h
POLL_S = 0.5


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: end this process as soon as `parent_pid` (the build) is gone."""
    _set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before we got here
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="mobex-parent-watch", daemon=True).start()


def pool_options() -> dict:
    """Keyword arguments for a ProcessPoolExecutor whose workers die with this process."""
    return {"initializer": die_with_parent, "initargs": (os.getpid(),)}


def _set_parent_death_signal() -> bool:
    """Ask the Linux kernel to SIGKILL this process when its parent dies; False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(POLL_S)
