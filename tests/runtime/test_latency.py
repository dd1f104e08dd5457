"""Latency measurement: percentiles from the timed runs, load time, and peak memory of what the runner allocates."""

from __future__ import annotations

import mmap
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from mobex.runtime.latency import measure, measure_runner


class _Allocating:
    """A runner whose load takes at least 20 ms and whose run touches `mib` MiB of fresh memory."""

    def __init__(self, mib: int) -> None:
        time.sleep(0.02)
        self.mib = mib

    def run(self, feed: dict) -> list[np.ndarray]:
        # A fresh anonymous mapping, every page written: resident memory that no allocator cache can reuse.
        size = self.mib * 1024 * 1024
        with mmap.mmap(-1, size) as buf:
            buf.write(b"\1" * size)
            first = buf[0]
        return [np.asarray([float(first)]) + feed["x"]]


def test_measure_counts_runs_and_percentiles() -> None:
    calls = []
    stats = measure(lambda: calls.append(1), threads=1, warmup=3, runs=20, batch=4)
    assert len(calls) == 23 and stats.runs == 20 and len(stats.samples_ms) == 20
    assert stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert stats.throughput_per_s == pytest.approx(4 * 1e3 / stats.mean_ms)
    assert stats.load_ms is None and stats.peak_memory_bytes is None


def test_measure_runner_reports_load_time_and_peak_memory() -> None:
    stats = measure_runner(lambda: _Allocating(64), {"x": np.zeros(1)}, threads=1, warmup=1, runs=3)
    assert stats.load_ms >= 20
    if stats.memory_method == "linux-vmhwm":
        assert stats.peak_memory_bytes >= 60 * 1024 * 1024  # the 64 MiB buffer, resident at its peak
    else:
        assert stats.peak_memory_bytes is None or stats.peak_memory_bytes >= 0
    assert stats.host and stats.threads == 1


def test_peak_memory_resets_between_measurements() -> None:
    """In a fresh process, so that what earlier tests left in this one cannot mask the peak."""
    code = textwrap.dedent(
        """
        import mmap
        from mobex.runtime.latency import PeakMemory
        tracker = PeakMemory()
        tracker.start()
        size = 48 * 1024 * 1024
        with mmap.mmap(-1, size) as big:
            big.write(b"\\1" * size)
        first = tracker.peak_bytes()
        tracker.start()
        print(tracker.method, first, tracker.peak_bytes())
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    method, first, second = done.stdout.split()
    if method != "linux-vmhwm":
        pytest.skip(f"peak reset needs Linux /proc/self/clear_refs (method here: {method})")
    assert int(first) >= 40 * 1024 * 1024 and int(second) < 8 * 1024 * 1024
