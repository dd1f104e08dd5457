"""The new shipped model next to the one it replaces, on the same validation data, in the same run.

Both models run on every validation sample in their targets' runners (LiteRT, the MIL interpreter, ...): the
previous model's task metrics against the labels (so old and new accuracy are measured on the same data), the
new model's agreement with the previous one (top-1 and output parity), and sizes. Latency is measured
interleaved (previous, new, previous, new, ...) so that load on a shared machine hits both alike; the ratio of
the medians is what the budget reads. A previous model whose inputs differ from the recipe's cannot run on this
data: the comparison says so, and budgets that need its outputs cannot pass.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mobex import plugins
from mobex.metrics.parity import parity_summary
from mobex.release.baseline import Baseline
from mobex.validate.validator import run_all

# Interleaved latency rounds (each runs both models once) after warm-up; small models are cheap to time.
LATENCY_ROUNDS = 60
LATENCY_WARMUP = 5


@dataclass(frozen=True)
class BaselineComparison:
    """What the report shows under `baseline.<platform>` and what the release budgets read."""

    platform: str
    previous: dict[str, Any]  # version, source, quantization, size_bytes, backend, metrics (vs the labels)
    new: dict[str, Any]  # version, quantization, size_bytes, backend, metrics
    agreement: dict[str, Any] | None  # the new model's outputs against the previous model's (parity summary)
    latency: dict[str, Any] | None  # interleaved p50 of each and their ratio, or None with a note
    size_growth: float | None
    notes: tuple[str, ...] = ()
    budgets: tuple[dict, ...] = field(default_factory=tuple)
    host_cannot_time: bool = False  # one of the targets has no latency on this host (Core ML off macOS)

    def to_dict(self) -> dict:
        return asdict(self)


def compare(baseline: Baseline, new: Any, version: str, plan: Any, data: Any, reference: Any) -> BaselineComparison:
    """Compare the shipped `new` (a VariantResult) with `baseline` on `data`; `plan` is the ValidationPlan."""
    names = list(plan.output_names)
    previous_info = {
        "version": baseline.version,
        "source": baseline.source,
        "quantization": baseline.manifest.model.get("quantization"),
        "size_bytes": baseline.model_size,
    }
    new_info = {"version": version, "quantization": new.quantization, "size_bytes": new.size_bytes,
                "backend": new.backend, "metrics": _task_metrics(new.parity or {})}  # fmt: skip
    growth = new.size_bytes / previous_info["size_bytes"] - 1 if previous_info["size_bytes"] else None
    mismatch = _io_mismatch(baseline, plan, data)
    if mismatch:
        previous_info["metrics"] = {}
        return BaselineComparison(baseline.platform, previous_info, new_info, None, None, growth, (mismatch,))
    old_target = _target_for(baseline)
    old = old_target.runner(baseline.model_path, None, plan.latency.threads[0])
    fresh = plugins.target(new.target).runner(new.artifact.path, None, plan.latency.threads[0])
    previous_info["backend"] = old.backend
    old_outputs = run_all(old.runner.run, data)
    new_outputs = run_all(fresh.runner.run, data)
    labels = data.batch_labels()
    previous_parity = parity_summary(
        names, reference.outputs, old_outputs, task=plan.task, labels=labels, num_classes=plan.num_classes
    )
    previous_info["metrics"] = _task_metrics(previous_parity)
    agreement = parity_summary(
        names, old_outputs, new_outputs, task=plan.task, labels=None, num_classes=plan.num_classes
    )
    latency, notes = _interleaved_latency(old_target, baseline, new, plan, data)
    return BaselineComparison(baseline.platform, previous_info, new_info, _agreement(agreement), latency, growth,
                              tuple(notes), host_cannot_time=latency is None)  # fmt: skip


def _target_for(baseline: Baseline) -> Any:
    info = plugins.target_for_format(baseline.manifest.model["format"])
    if info is None:
        from mobex.errors import UsageError

        raise UsageError(f"the baseline's model format {baseline.manifest.model['format']!r} is unknown to this mobex")
    return plugins.target(info.name)


def _io_mismatch(baseline: Baseline, plan: Any, data: Any) -> str | None:
    """Why the previous model cannot run on this build's data (inputs renamed or reshaped), or None."""
    theirs = [(t["name"], list(t["shape"])) for t in baseline.manifest.model["inputs"]]
    ours = [(name, [data.batch, *arr.shape[1:]]) for name, arr in data.arrays.items()]
    if sorted(theirs) != sorted(ours):
        return f"previous model's inputs {theirs} differ from this build's {ours}: not run on this data"
    if len(baseline.manifest.model["outputs"]) != len(plan.output_names):
        return "previous model has another number of outputs: its outputs are not compared"
    return None


_TASK_KEYS = ("accuracy", "f1", "precision", "recall", "mae", "rmse", "top1_agreement", "cosine_min", "snr_db")
_AGREEMENT_KEYS = ("top1_agreement", "top5_agreement", "cosine_min", "cosine_mean", "max_abs_error",
                   "mean_abs_error", "snr_db")  # fmt: skip


def _task_metrics(parity: dict) -> dict:
    """The numbers of a parity summary a release compares (accuracy, F1, ... and agreement with the original)."""
    return {k: parity[k] for k in _TASK_KEYS if isinstance(parity.get(k), (int, float))}


def _agreement(parity: dict) -> dict:
    return {k: parity[k] for k in _AGREEMENT_KEYS if isinstance(parity.get(k), (int, float))}


def _interleaved_latency(
    old_target: Any, baseline: Baseline, new: Any, plan: Any, data: Any
) -> tuple[dict | None, list[str]]:
    """Median single-batch latency of both models, timed alternately in one loop, and their ratio."""
    make_old = old_target.latency_runner(baseline.model_path, None)
    make_new = plugins.target(new.target).latency_runner(new.artifact.path, None)
    if make_old is None or make_new is None:
        return None, ["latency not compared: this host cannot time one of the two models (e.g. Core ML off macOS)"]
    return interleaved_p50(make_old, make_new, data.feed(0), threads=plan.latency.threads[0]), []


def interleaved_p50(make_old: Any, make_new: Any, feed: dict, *, threads: int, rounds: int = LATENCY_ROUNDS,
                    warmup: int = LATENCY_WARMUP) -> dict:  # fmt: skip
    """Both models timed alternately on `feed` (`make_*(threads)` creates a runner): medians and new/old ratio."""
    old, fresh = make_old(threads), make_new(threads)
    for _ in range(warmup):
        old.run(feed)
        fresh.run(feed)
    times = np.empty((rounds, 2))
    for i in range(rounds):
        for j, runner in enumerate((old, fresh)):
            start = time.perf_counter()
            runner.run(feed)
            times[i, j] = time.perf_counter() - start
    p50_old, p50_new = (float(np.median(times[:, j]) * 1e3) for j in (0, 1))
    return {"previous_p50_ms": p50_old, "new_p50_ms": p50_new, "ratio": p50_new / p50_old if p50_old else None,
            "rounds": rounds, "threads": threads, "method": "interleaved"}  # fmt: skip
