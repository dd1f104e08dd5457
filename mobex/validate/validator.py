"""Validation stage: run the original model and every exported variant on the whole validation split.

Which runtime produces a variant's numbers is always recorded as its `backend`:
- `litert`: TFLite in ai-edge-litert's interpreter (XNNPACK, the kernels Android uses on CPU);
- `coreml-runtime`: Core ML's own `MLModel.predict` (macOS only; not exercised in this project's CI);
- `mil-reference`: mobex's numpy/torch reference interpreter of the saved Core ML program (Linux).
A variant that could not be run says why in `status` and gets no invented numbers.
"""

from __future__ import annotations

import json
import platform as host_platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobex.artifacts import ExportedVariant
from mobex.data import Dataset
from mobex.metrics.parity import parity_summary, reference_task_metrics
from mobex.recipe import Recipe
from mobex.runtime.latency import measure_runner
from mobex.validate import gates as gates_mod
from mobex.validate.stats import reference_statistics


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
    # Drift reference statistics (validation inputs + this variant's outputs); goes into the bundle, not the report.
    reference_stats: dict | None = None
    # How a quantized variant was made (int8: calibration, equalization, fallback layers and their cost).
    quantization_details: dict | None = None

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
            "quantization_details": self.quantization_details,
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
    input_stats: dict | None = None  # reference statistics of the validation inputs (drift asset)


def run_reference(model, recipe: Recipe, data: Dataset) -> ReferenceResult:  # noqa: ANN001 - torch module
    """The original model in torch: outputs on the whole split, task metrics, latency per thread count.

    Load time is that of a fresh `load_model(recipe)` (the recipe's source and weights), measured
    only when the model passed in is that model: after pruning it is not, and load time is left out.
    """
    import torch

    from mobex.runtime.torch_model import TorchRunner

    names = [i.name for i in recipe.inputs]
    runner = TorchRunner(model, names, num_threads=recipe.latency.threads[0])
    outputs = run_all(runner.run, data)
    latencies = []
    first = data.feed(0)
    fresh = recipe.prune is None
    for threads in recipe.latency.threads:
        if fresh:
            from mobex.sources import load_model

            def make(t: int = threads) -> TorchRunner:
                return TorchRunner(load_model(recipe), names, num_threads=t)
        else:

            def make(t: int = threads) -> TorchRunner:
                return TorchRunner(model, names, num_threads=t)

        stats = measure_runner(
            make, first, threads=threads, warmup=recipe.latency.warmup, runs=recipe.latency.runs, batch=data.batch
        )
        if not fresh:
            stats.load_ms = None
        latencies.append(stats.to_dict())
    torch.set_num_threads(recipe.latency.threads[0])
    metrics = reference_task_metrics(outputs, task=recipe.model.task, labels=data.batch_labels())
    return ReferenceResult(
        outputs,
        metrics,
        latencies[0] if latencies else None,
        latencies,
        input_stats=reference_statistics(
            _used(data), None, None, task=recipe.model.task, preprocessing=recipe.preprocessing.record()
        ),
    )


def _used(data: Dataset) -> dict[str, np.ndarray]:
    """The input samples the validation actually ran (whole batches), aligned with the outputs."""
    n = data.num_batches * data.batch
    return {name: arr[:n] for name, arr in data.arrays.items()}


def _quantization_details(variant: ExportedVariant) -> dict | None:
    """The sidecar `<model>.tflite.json` that mobex.quantize writes for int8 models, if any."""
    sidecar = variant.path.with_name(variant.path.name + ".json")
    if variant.target != "tflite" or not sidecar.is_file():
        return None
    try:
        return json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        return {"error": f"could not read {sidecar.name}: {exc}"}


def _coreml_runner(variant: ExportedVariant, recipe: Recipe):  # noqa: ANN202
    """The best Core ML runner this host has: the real runtime on macOS, else the MIL reference interpreter."""
    if host_platform.system() == "Darwin":
        from mobex.runtime.coreml_runtime import CoreMLRuntimeRunner

        return CoreMLRuntimeRunner(variant.path, compute_units=recipe.ios.compute_units), "coreml-runtime"
    from mobex.runtime.mil.interpreter import MilReferenceRunner

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
        quantization_details=_quantization_details(variant),
        export_seconds=round(variant.seconds, 3),
        artifact=variant,
    )
    labels = recipe.labels()
    not_run: str | None = None
    metrics: dict[str, float | None] = {"size_bytes": float(variant.size_bytes)}
    try:
        if variant.target == "tflite":
            from mobex.runtime.litert import TfliteRunner

            runner = TfliteRunner(variant.path, num_threads=recipe.latency.threads[0])
            report.backend = "litert"
            partitions = runner.delegate_partitions()
            if partitions == 0:
                report.notes.append("no op runs in XNNPACK: the whole graph uses LiteRT's reference kernels")
            elif partitions is not None and partitions > 1:
                report.notes.append(
                    f"runs as {partitions} XNNPACK partitions: ops XNNPACK has no kernel for in this precision run "
                    "on LiteRT's reference kernels in between, which costs latency on CPU"
                )
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
        report.reference_stats = _variant_stats(reference, outputs, output_names, recipe, data)
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
    results = gates_mod.evaluate(
        variant.quantization, recipe.model.task, metrics, recipe.gates, not_run, has_labels=data.labels is not None
    )
    report.gates = [g.to_dict() for g in results]
    report.passed = all(g.passed for g in results)
    report.validate_seconds = round(time.perf_counter() - start, 3)
    return report


class _NotRunnable(Exception):
    """The variant cannot be executed on this host (e.g. an op the reference interpreter lacks)."""


def _variant_stats(
    reference: ReferenceResult, outputs: list[np.ndarray], output_names: list[str], recipe: Recipe, data: Dataset
) -> dict:
    """Drift reference: the validation inputs' statistics plus this variant's own outputs on them.

    The variant's outputs (not the original model's) are the reference, so a later drift check of the
    shipped model measures what the data changed, not what quantization changed.
    """
    base = reference.input_stats or reference_statistics(
        _used(data), None, None, task=recipe.model.task, preprocessing=recipe.preprocessing.record()
    )
    own = reference_statistics({}, outputs, output_names, task=recipe.model.task)
    return {**base, "plans": base["plans"] + own["plans"], "features": base["features"] + own["features"]}


def _tflite_latency(variant: ExportedVariant, recipe: Recipe, data: Dataset) -> list[dict]:
    """Load time, latency and peak memory of a fresh interpreter per thread count."""
    from mobex.runtime.litert import TfliteRunner

    first = data.feed(0)
    out = []
    for threads in recipe.latency.threads:
        stats = measure_runner(
            lambda t=threads: TfliteRunner(variant.path, num_threads=t),
            first,
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


def validate_model_file(recipe: Recipe, model_path: Path, quantization: str = "fp32") -> tuple[VariantReport, dict]:
    """Validate one already-exported model (.tflite or .mlpackage) against the recipe's original model.

    The same checks as a build's validation stage, without converting anything: data checks, the
    original model's outputs, parity, task metrics, latency (TFLite) and the gates of the
    `quantization` family. Returns the variant report and the original model's metrics and latency.
    """
    from mobex.artifacts import path_size
    from mobex.data import load_dataset
    from mobex.errors import UsageError
    from mobex.export import output_names
    from mobex.sources import load_model

    model_path = Path(model_path)
    if model_path.suffix == ".tflite" and model_path.is_file():
        from mobex.runtime.litert import load_tflite_io

        io = load_tflite_io(model_path)
        target, platform, inputs, outputs = "tflite", "android", io.inputs, io.outputs
    elif model_path.suffix == ".mlpackage" and model_path.is_dir():
        from mobex.converters.coreml import read_io

        target, platform = "coreml", "ios"
        inputs, outputs = read_io(model_path)
    else:
        raise UsageError(
            f"{model_path} is not a .tflite file or an .mlpackage folder", "pass a model exported by mobex or LiteRT"
        )
    data = load_dataset(recipe, "validation", recipe.data.validation)
    reference = run_reference(load_model(recipe), recipe, data)
    variant = ExportedVariant(
        target=target,
        platform=platform,
        quantization=quantization,
        path=model_path,
        inputs=list(inputs),
        outputs=list(outputs),
        size_bytes=path_size(model_path),
    )
    report = validate_variant(variant, recipe, data, reference, output_names(recipe, len(reference.outputs)))
    reference_entry = {
        "backend": "torch",
        "metrics": reference.metrics,
        "latency": reference.latency,
        "latency_by_threads": reference.latency_by_threads,
        "data_checks": [c.to_dict() for c in data.checks],
    }
    return report, reference_entry
