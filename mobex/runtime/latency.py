"""Latency of one model on the build host: load time, warm-up, timed runs, percentiles, peak memory.

Host numbers are not phone numbers: they rank variants against each other and catch regressions;
the report says so (HOST_NOTE) and names the host (`host_description`).

Peak memory is the growth of the process's resident set (RSS) while the runner is created, warmed
up and timed, so it covers native allocations (LiteRT's arena, XNNPACK's packed weights, torch's
buffers) that Python's tracemalloc cannot see. On Linux the kernel's high-water mark (VmHWM) is
reset through /proc/self/clear_refs before the measurement, so the number is this runner's own
peak over the RSS it started from. Elsewhere it falls back to the growth of ru_maxrss, a lower
bound (zero when an earlier step of the build already peaked higher). `memory_method` says which.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HOST_NOTE = "measured on the build host's CPU; phones differ — compare variants, not absolute numbers"
# Thread counts used when the recipe's [latency] does not say: one core, and four like a phone's big cores.
DEFAULT_THREADS: tuple[int, ...] = (1, 4)

_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class LatencyStats:
    threads: int
    warmup: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    throughput_per_s: float
    samples_ms: list[float]
    batch: int = 1
    load_ms: float | None = None
    peak_memory_bytes: int | None = None
    memory_method: str | None = None
    host: str = field(default_factory=lambda: host_description())

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or ""


@functools.cache
def host_description() -> str:
    """'Linux x86_64, AMD EPYC …, 2 logical CPUs': what the numbers were measured on."""
    parts = [f"{platform.system()} {platform.machine()}", cpu_name(), f"{os.cpu_count()} logical CPUs"]
    return ", ".join(p for p in parts if p)


def _stats(times_s: np.ndarray, *, threads: int, warmup: int, batch: int) -> LatencyStats:
    ms = times_s * 1e3
    mean = float(ms.mean())
    return LatencyStats(
        threads=threads,
        warmup=warmup,
        runs=int(ms.size),
        p50_ms=float(np.percentile(ms, 50)),
        p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)),
        mean_ms=mean,
        std_ms=float(ms.std()),
        min_ms=float(ms.min()),
        max_ms=float(ms.max()),
        throughput_per_s=float(batch * 1e3 / mean) if mean > 0 else 0.0,
        samples_ms=[round(float(x), 4) for x in ms],
        batch=batch,
    )


def _time(call: Callable[[], object], warmup: int, runs: int) -> np.ndarray:
    for _ in range(warmup):
        call()
    times = np.empty(runs, dtype=np.float64)
    for i in range(runs):
        start = time.perf_counter()
        call()
        times[i] = time.perf_counter() - start
    return times


def measure(call: Callable[[], object], *, threads: int, warmup: int, runs: int, batch: int = 1) -> LatencyStats:
    """Time `call` `runs` times after `warmup` untimed calls; throughput counts samples (batch) per second."""
    return _stats(_time(call, warmup, runs), threads=threads, warmup=warmup, batch=batch)


def measure_runner(
    make_runner: Callable[[], Any],
    feed: dict[str, np.ndarray],
    *,
    threads: int,
    warmup: int,
    runs: int,
    batch: int = 1,
) -> LatencyStats:
    """Create a runner (timed: `load_ms`), then time `runner.run(feed)`, tracking peak memory throughout.

    The runner is dropped before returning, so consecutive measurements start from similar memory.
    """
    tracker = PeakMemory()
    tracker.start()
    start = time.perf_counter()
    runner = make_runner()
    load_s = time.perf_counter() - start
    times = _time(lambda: runner.run(feed), warmup, runs)
    peak = tracker.peak_bytes()
    runner = None  # let it go before the next measurement
    stats = _stats(times, threads=threads, warmup=warmup, batch=batch)
    stats.load_ms = load_s * 1e3
    stats.peak_memory_bytes = peak
    stats.memory_method = tracker.method
    return stats


class PeakMemory:
    """Peak resident-memory growth of this process between `start()` and `peak_bytes()` (see module docstring)."""

    def __init__(self) -> None:
        self.method: str | None = None
        self._baseline = 0

    def start(self) -> None:
        # Generations 0 and 1 only: the runner dropped before this measurement is recent garbage. A full
        # collection walks every object torch and coremltools keep alive (~0.8 s per call on the 2-core VM,
        # 6+ calls per build) and buys nothing here: CPython seldom returns freed memory to the OS.
        gc.collect(1)
        if _reset_high_water_mark():
            self.method = "linux-vmhwm"
            self._baseline = _proc_status_bytes("VmRSS") or 0
            return
        maxrss = _ru_maxrss_bytes()
        if maxrss is not None:
            self.method = "ru_maxrss-growth"
            self._baseline = maxrss
        else:
            self.method = None

    def peak_bytes(self) -> int | None:
        if self.method == "linux-vmhwm":
            peak = _proc_status_bytes("VmHWM")
            return None if peak is None else max(0, peak - self._baseline)
        if self.method == "ru_maxrss-growth":
            maxrss = _ru_maxrss_bytes()
            return None if maxrss is None else max(0, maxrss - self._baseline)
        return None


def _reset_high_water_mark() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0). False where /proc is missing or read-only."""
    if not _PROC_STATUS.is_file():
        return False
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _proc_status_bytes("VmHWM") is not None


def _proc_status_bytes(key: str) -> int | None:
    try:
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                value, unit = line.split(":", 1)[1].split()
                return int(value) * (1024 if unit.lower() == "kb" else 1)
    except (OSError, ValueError):
        return None
    return None


def _ru_maxrss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss) if platform.system() == "Darwin" else int(maxrss) * 1024  # macOS: bytes, Linux: KiB
