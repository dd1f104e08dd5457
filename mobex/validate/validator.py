"""Validation stage: run the original model and every exported variant on the whole validation split.

Which runtime produces a variant's numbers is always recorded as its `backend`:
- `litert`: TFLite in ai-edge-litert's interpreter (XNNPACK, the kernels Android uses on CPU);
- `coreml-runtime`: Core ML's own `MLModel.predict` (macOS only; not exercised in this project's CI);
- `mil-reference`: mobex's numpy/torch reference interpreter of the saved Core ML program (Linux).
A variant that could not be run says why in `status` and gets no invented numbers.
"""

from __future__ import annotations

import platform as host_platform
from dataclasses import dataclass, field

import numpy as np

from mobex.artifacts import ExportedVariant
from mobex.data import Dataset
from mobex.recipe import Recipe
from mobex.validate import gates as gates_mod
from mobex.validate.latency import measure
from mobex.validate.parity import parity_summary, reference_task_metrics


@dataclass
class VariantReport:
    """One candidate variant as the report shows it."""

    platform: str
    target: str
    quantization: str
    status: str
    size_bytes: int | None = None
    backend: str | None = None
    parity: dict | None = None
    latency: dict | None = None
    latency_by_threads: list[dict] = field(default_factory=list)
    gates: list[dict] = field(default_factory=list)
    passed: bool = False
    shipped: bool = False
    notes: list[str] = field(default_factory=list)
    export_seconds: float | None = None
    validate_seconds: float | None = None
    artifact: ExportedVariant | None = None

    def to_dict(self) -> dict:
        return {
            "id": f"{self.platform}/{self.quantization}",
            "target": self.target,
            "platform": self.platform,
            "quantization": self.quantization,
            "status": self.status,
            "size_bytes": self.size_bytes,
            "backend": self.backend,
            "parity": self.parity,
            "latency": self.latency,
            "latency_by_threads": self.latency_by_threads,
            "gates": self.gates,
            "passed": self.passed,
            "shipped": self.shipped,
            "notes": self.notes,
            "inputs": [t.to_dict() for t in self.artifact.inputs] if self.artifact else None,
            "outputs": [t.to_dict() for t in self.artifact.outputs] if self.artifact else None,
            "export_seconds": self.export_seconds,
            "validate_seconds": self.validate_seconds,
        }


def run_all(runner_run, data: Dataset) -> list[np.ndarray]:  # noqa: ANN001 - any runner's .run
    """Outputs for every batch of `data`, concatenated per output along the sample axis."""
    per_output: list[list[np.ndarray]] | None = None
    for feed in data.feeds():
        outs = runner_run(feed)
        if per_output is None:
            per_output = [[] for _ in outs]
        for i, o in enumerate(outs):
            per_output[i].append(np.asarray(o))
    assert per_output is not None, "validation data has at least one batch (checked at load)"
    return [np.concatenate(chunks, axis=0) for chunks in per_output]


@dataclass
class ReferenceResult:
    outputs: list[np.ndarray]
    metrics: dict
    latency: dict | None
    latency_by_threads: list[dict]


def run_reference(model, recipe: Recipe, data: Dataset) -> ReferenceResult:  # noqa: ANN001 - torch module
    """The original model in torch: outputs on the whole split, task metrics, latency per thread count."""
    import torch

    from mobex.validate.runners import TorchRunner

    names = [i.name for i in recipe.inputs]
    runner = TorchRunner(model, names, num_threads=recipe.latency.threads[0])
    outputs = run_all(runner.run, data)
    latencies = []
    first = data.feed(0)
    for threads in recipe.latency.threads:
        timed = TorchRunner(model, names, num_threads=threads)
        stats = measure(
            lambda r=timed: r.run(first),
            threads=threads,
            warmup=recipe.latency.warmup,
            runs=recipe.latency.runs,
            batch=data.batch,
        )
        latencies.append(stats.to_dict())
    torch.set_num_threads(recipe.latency.threads[0])
    metrics = reference_task_metrics(outputs, task=recipe.model.task, labels=data.batch_labels())
    return ReferenceResult(outputs, metrics, latencies[0] if latencies else None, latencies)


def _coreml_runner(variant: ExportedVariant, recipe: Recipe):  # noqa: ANN202
    """The best Core ML runner this host has: the real runtime on macOS, else the MIL reference interpreter."""
    if host_platform.system() == "Darwin":
        from mobex.validate.coreml_runtime import CoreMLRuntimeRunner

        return CoreMLRuntimeRunner(variant.path, compute_units=recipe.ios.compute_units), "coreml-runtime"
    from mobex.validate.mil.interpreter import MilReferenceRunner

    return MilReferenceRunner(variant.path), "mil-reference"


def validate_variant(
    variant: ExportedVariant, recipe: Recipe, data: Dataset, reference: ReferenceResult, output_names: list[str]
) -> VariantReport:
    """Parity, task metrics, latency and gates of one exported variant."""
    import time

    start = time.perf_counter()
    report = VariantReport(
        platform=variant.platform,
        target=variant.target,
        quantization=variant.quantization,
        status="validated",
        size_bytes=variant.size_bytes,
        notes=list(variant.notes),
        export_seconds=round(variant.seconds, 3),
        artifact=variant,
    )
    labels = recipe.labels()
    not_run: str | None = None
    metrics: dict[str, float | None] = {"size_bytes": float(variant.size_bytes)}
    try:
        if variant.target == "tflite":
            from mobex.validate.runners import TfliteRunner

            runner = TfliteRunner(variant.path, num_threads=recipe.latency.threads[0])
            report.backend = "litert"
        else:
            runner, report.backend = _coreml_runner(variant, recipe)
            unsupported = getattr(runner, "unsupported_ops", lambda: [])()
            if unsupported:
                raise _NotRunnable(f"unsupported op {', '.join(unsupported)}")
        outputs = run_all(runner.run, data)
        report.parity = parity_summary(
            output_names,
            reference.outputs,
            outputs,
            task=recipe.model.task,
            labels=data.batch_labels(),
            num_classes=len(labels) if labels else None,
        )
        metrics.update({k: v for k, v in report.parity.items() if isinstance(v, (int, float))})
        if variant.target == "tflite":
            report.latency_by_threads = _tflite_latency(variant, recipe, data)
            report.latency = report.latency_by_threads[0]
            metrics["p50_ms"] = report.latency["p50_ms"]
        elif report.backend == "mil-reference":
            report.notes.append("latency not measured: the MIL reference interpreter is not the Core ML runtime")
    except _NotRunnable as exc:
        not_run = str(exc)
        report.status = f"not run: {exc}"
    except Exception as exc:  # a runtime failure of the exported model is a result, not a crash
        not_run = f"{type(exc).__name__}: {exc}"
        report.status = f"failed to run: {not_run}"
    results = gates_mod.evaluate(variant.quantization, recipe.model.task, metrics, recipe.gates, not_run)
    report.gates = [g.to_dict() for g in results]
    report.passed = all(g.passed for g in results)
    report.validate_seconds = round(time.perf_counter() - start, 3)
    return report


class _NotRunnable(Exception):
    """The variant cannot be executed on this host (e.g. an op the reference interpreter lacks)."""


def _tflite_latency(variant: ExportedVariant, recipe: Recipe, data: Dataset) -> list[dict]:
    from mobex.validate.runners import TfliteRunner

    first = data.feed(0)
    out = []
    for threads in recipe.latency.threads:
        runner = TfliteRunner(variant.path, num_threads=threads)
        stats = measure(
            lambda r=runner: r.run(first),
            threads=threads,
            warmup=recipe.latency.warmup,
            runs=recipe.latency.runs,
            batch=data.batch,
        )
        out.append(stats.to_dict())
    return out


def failed_export_report(platform: str, target: str, quantization: str, message: str, recipe: Recipe) -> VariantReport:
    """A variant whose conversion failed: in the report with its gates failed, never silently missing."""
    results = gates_mod.evaluate(quantization, recipe.model.task, {}, recipe.gates, f"conversion failed: {message}")
    for g in results:
        g.passed = False  # allow_unvalidated never lets a variant that does not exist pass
    return VariantReport(
        platform=platform,
        target=target,
        quantization=quantization,
        status=f"conversion failed: {message}",
        gates=[g.to_dict() for g in results],
        passed=False,
    )
