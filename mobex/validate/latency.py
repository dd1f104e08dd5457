"""Latency of one callable: warm-up, then timed runs, percentiles and throughput.

Host numbers are not phone numbers: they rank variants against each other and catch regressions;
the report says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

HOST_NOTE = "measured on the build host's CPU; phones differ — compare variants, not absolute numbers"


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
    throughput_per_s: float
    samples_ms: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def measure(call: Callable[[], object], *, threads: int, warmup: int, runs: int, batch: int = 1) -> LatencyStats:
    """Time `call` `runs` times after `warmup` untimed calls; throughput counts samples (batch) per second."""
    for _ in range(warmup):
        call()
    times = np.empty(runs, dtype=np.float64)
    for i in range(runs):
        start = time.perf_counter()
        call()
        times[i] = time.perf_counter() - start
    ms = times * 1e3
    mean = float(ms.mean())
    return LatencyStats(
        threads=threads,
        warmup=warmup,
        runs=runs,
        p50_ms=float(np.percentile(ms, 50)),
        p90_ms=float(np.percentile(ms, 90)),
        p99_ms=float(np.percentile(ms, 99)),
        mean_ms=mean,
        std_ms=float(ms.std()),
        min_ms=float(ms.min()),
        throughput_per_s=float(batch * 1e3 / mean) if mean > 0 else 0.0,
        samples_ms=[round(float(x), 4) for x in ms],
    )
