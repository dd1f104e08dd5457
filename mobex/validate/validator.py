"""Validation stage: run the original model and every exported variant on the whole validation split.

Which runtime produces a variant's numbers is always recorded as its `backend`:
- `litert`: TFLite in ai-edge-litert's interpreter (XNNPACK, the kernels Android uses on CPU);
- `coreml-runtime`: Core ML's own `MLModel.predict` (macOS only; not exercised in this project's CI);
- `mil-reference`: mobex's numpy/torch reference interpreter of the saved Core ML program (Linux), also of the
  ML program inside an ExecuTorch `.pte` with a Core ML partition;
- `executorch`: ExecuTorch's own runtime (`executorch.runtime`, XNNPACK), for `.pte` programs.
A variant that could not be run says why in `status` and gets no invented numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobex import plugins
from mobex.artifacts import ExportedVariant
from mobex.data import Dataset
from mobex.metrics import tasks
from mobex.metrics.streaming import step_parity
from mobex.plugins import VariantRequest
from mobex.recipe import GatesSection, LatencySection, Recipe
from mobex.runtime.latency import measure_runner
from mobex.runtime.streaming import flatten_steps, run_sequences, state_indices
from mobex.targets.base import BuiltVariant, NotRunnable, RunnerInfo
from mobex.validate import gates as gates_mod
from mobex.validate.stats import reference_statistics


@dataclass(frozen=True)
class ValidationPlan:
    """What validating a variant reads from the recipe: task (and its outputs), gates, latency settings, output
    names, [[state]] pairs (input name, output index), the inputs' dtypes as the original model takes them."""

    task: str
    num_classes: int | None
    gates: GatesSection
    latency: LatencySection
    output_names: tuple[str, ...]
    preprocessing: dict
    spec: tasks.TaskSpec
    states: tuple[tuple[str, int], ...] = ()
    input_dtypes: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, recipe: Recipe, output_names: list[str]) -> ValidationPlan:
        spec = tasks.TaskSpec.of(recipe, output_names)
        return cls(
            task=recipe.model.task,
            num_classes=spec.num_classes,
            gates=recipe.gates,
            latency=recipe.latency,
            output_names=tuple(output_names),
            preprocessing=recipe.preprocessing.record(),
            spec=spec,
            states=tuple(state_indices(recipe, list(output_names))),
            input_dtypes=tuple((i.name, i.dtype) for i in recipe.inputs),
        )


@dataclass(frozen=True)
class VariantResult:
    """One candidate variant as validated: the report's entry, and what a bundle of it needs."""

    request: VariantRequest
    status: str
    size_bytes: int | None = None
    backend: str | None = None
    parity: dict | None = None
    latency: dict | None = None
    latency_by_threads: tuple[dict, ...] = ()
    gates: tuple[dict, ...] = ()
    passed: bool = False
    notes: tuple[str, ...] = ()
    export_seconds: float | None = None
    validate_seconds: float | None = None
    artifact: ExportedVariant | None = None
    # Drift reference statistics (validation inputs + this variant's outputs); goes into the bundle, not the report.
    reference_stats: dict | None = None
    # How a quantized variant was made (int8: calibration, equalization, fallback layers and their cost).
    quantization_details: dict | None = None
    # Default gates left out because their metric cannot tell good from bad for this model, with why.
    gates_not_applied: tuple[dict, ...] = ()
    # Which ops run in the delegate and which on reference kernels (TFLite: XNNPACK), or None.
    delegation: dict | None = None
    # Per input/output what the original model takes or returns (torch dtype, checked integer range).
    io_contract: dict | None = None
    # Whether its export and validation came from the build cache (mobex.cache; docs/report-schema.md).
    cache: dict | None = None

    @property
    def id(self) -> str:
        return f"{self.request.platform}/{self.request.spelled}"

    @property
    def platform(self) -> str:
        return self.request.platform

    @property
    def target(self) -> str:
        return self.request.target

    @property
    def quantization(self) -> str:
        return self.request.name

    def to_dict(self, shipped: bool = False, extra_notes: tuple[str, ...] = ()) -> dict:
        return {
            "id": self.id,
            "target": self.target,
            "platform": self.platform,
            "quantization": self.quantization,
            "status": self.status,
            "size_bytes": self.size_bytes,
            "backend": self.backend,
            "parity": self.parity,
            "latency": self.latency,
            "latency_by_threads": list(self.latency_by_threads),
            "gates": list(self.gates),
            "passed": self.passed,
            "shipped": shipped,
            "notes": [*self.notes, *extra_notes],
            "inputs": self.io_dicts()[0] if self.artifact else None,
            "outputs": self.io_dicts()[1] if self.artifact else None,
            "export_seconds": self.export_seconds,
            "validate_seconds": self.validate_seconds,
            "quantization_details": self.quantization_details,
            "gates_not_applied": list(self.gates_not_applied),
            "delegation": self.delegation,
            "cache": self.cache,
        }

    def io_dicts(self) -> tuple[list[dict], list[dict]]:
        """The exported model's inputs and outputs (name, shape, dtype as the model stores it, quantization),
        each with what the original model takes or returns (`torch_dtype`, `checked_range`) when known."""
        assert self.artifact is not None
        contract = self.io_contract or {}
        return (
            _merged(self.artifact.inputs, contract.get("inputs", [])),
            _merged(self.artifact.outputs, contract.get("outputs", [])),
        )


def _merged(specs: list, contract: list[dict]) -> list[dict]:
    """Tensor specs with the contract's entry of the same name (the contract never renames or reorders)."""
    by_name = {c["name"]: c for c in contract}
    return [{**t.to_dict(), **{k: v for k, v in by_name.get(t.name, {}).items() if k != "name"}} for t in specs]


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


def run_outputs(run, data: Dataset, states: tuple[tuple[str, int], ...]) -> tuple[list[np.ndarray], list | None]:  # noqa: ANN001
    """A model's outputs on the whole split: (outputs, None), or for streaming data (every step's outputs, one
    sample per step, sequence by sequence; the same as [S, T, ...] per output) with the model's own states."""
    if data.sequences is None:
        return run_all(run, data), None
    steps, _ = run_sequences(run, data.sequences, list(states))
    return flatten_steps(steps), steps


@dataclass
class ReferenceResult:
    outputs: list[np.ndarray]
    metrics: dict
    latency: dict | None
    latency_by_threads: list[dict]
    input_stats: dict | None = None  # reference statistics of the validation inputs (drift asset)
    step_outputs: list[np.ndarray] | None = None  # streaming: [S, T, ...] per output, on the model's own states
    cache: str | None = None  # "hit" when read from the build cache (mobex.cache), "miss", "off"; None: not asked


def run_reference(model, recipe: Recipe, data: Dataset) -> ReferenceResult:  # noqa: ANN001 - torch module
    """The original model in torch: outputs on the whole split, task metrics, latency per thread count.

    A streaming model runs every sequence step by step on its own state, as every variant does. Load time is
    that of a fresh `load_model(recipe)` (the recipe's source and weights), measured only when the model
    passed in is that model: after pruning it is not, and load time is left out.
    """
    import torch

    from mobex.runtime.torch_model import TorchRunner

    names = [i.name for i in recipe.inputs]
    runner = TorchRunner(model, names, num_threads=recipe.latency.threads[0])
    steps = None
    if data.sequences is not None:
        states = state_indices(recipe, recipe.output_names(len(runner.run(data.feed(0)))))
        steps, fed = run_sequences(runner.run, data.sequences, states)
        outputs = flatten_steps(steps)
        data = data.with_fed_states(fed)  # the drift statistics see the states the model really fed itself
    else:
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
    spec = tasks.TaskSpec.of(recipe, recipe.output_names(len(outputs)))
    metrics = tasks.reference_metrics(spec, outputs, data.batch_labels())
    return ReferenceResult(
        outputs,
        metrics,
        latencies[0] if latencies else None,
        latencies,
        input_stats=reference_statistics(
            _used(data), None, None, task=recipe.model.task, preprocessing=recipe.preprocessing.record()
        ),
        step_outputs=steps,
    )


def _used(data: Dataset) -> dict[str, np.ndarray]:
    """The input samples the validation actually ran (whole batches), aligned with the outputs."""
    n = data.num_batches * data.batch
    return {name: arr[:n] for name, arr in data.arrays.items()}


def validate_variant(
    built: BuiltVariant, plan: ValidationPlan, options: Any, data: Dataset, reference: ReferenceResult
) -> VariantResult:
    """Parity, task metrics, latency and gates of one exported variant, in the runtime its target provides.

    `options` are the target's options from the export job (e.g. Core ML's compute units).
    """
    import time

    start = time.perf_counter()
    variant, request = built.artifact, built.request
    run = _Run(notes=list(variant.notes))
    metrics: dict[str, float | None] = {"size_bytes": float(variant.size_bytes)}
    not_run: str | None = None
    try:
        _measure(run, plugins.target(request.target), variant, options, plan, data, reference)
        metrics.update({k: v for k, v in run.parity.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if run.latency is not None:
            metrics["p50_ms"] = run.latency["p50_ms"]
    except NotRunnable as exc:
        run.backend = exc.backend or run.backend
        not_run = str(exc)
        run.status = f"not run: {exc}"
    except Exception as exc:  # a runtime failure of the exported model is a result, not a crash
        not_run = f"{type(exc).__name__}: {exc}"
        run.status = f"failed to run: {not_run}"
    has_labels = data.labels is not None
    results = gates_mod.evaluate(
        request.spec, plan.task, metrics, plan.gates, not_run, has_labels=has_labels, not_applicable=run.not_applicable
    )
    skipped = gates_mod.not_applied(request.spec, plan.task, plan.gates, run.not_applicable, has_labels)
    return VariantResult(
        request=request,
        status=run.status or "validated",
        size_bytes=variant.size_bytes,
        backend=run.backend,
        parity=run.parity or None,
        latency=run.latency,
        latency_by_threads=tuple(run.by_threads),
        gates=tuple(g.to_dict() for g in results),
        passed=all(g.passed for g in results),
        notes=tuple(run.notes),
        export_seconds=round(variant.seconds, 3),
        validate_seconds=round(time.perf_counter() - start, 3),
        artifact=variant,
        reference_stats=run.stats,
        quantization_details=variant.details,
        gates_not_applied=tuple(skipped) if not_run is None else (),
        delegation=run.delegation,
        io_contract=io_contract(plan, data, reference),
    )


@dataclass
class _Run:
    """What running one variant found, filled in step by step (a failure keeps what was found before it)."""

    notes: list[str]
    backend: str | None = None
    status: str | None = None
    parity: dict = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)
    latency: dict | None = None
    by_threads: list[dict] = field(default_factory=list)
    stats: dict | None = None
    delegation: dict | None = None


def _measure(
    run: _Run, target: Any, variant: ExportedVariant, options: Any, plan: ValidationPlan, data: Dataset,
    reference: ReferenceResult,
) -> None:  # fmt: skip
    """Run the variant on the split (streaming: step by step on its own state), then time it."""
    info = _runner(target, variant, options, plan)
    run.backend, run.delegation = info.backend, info.delegation
    run.notes.extend(info.notes)
    outputs, steps = run_outputs(info.runner.run, data, plan.states)
    if info.view is None:
        evaluation = tasks.evaluate(plan.spec, reference.outputs, outputs, data.batch_labels())
    else:  # outputs in another form than the recipe's (Core ML's Vision detection layout): compared in that form
        evaluation = info.view.evaluate(plan.spec, reference.outputs, outputs, data.batch_labels())
    run.parity, run.not_applicable = evaluation.parity, evaluation.not_applicable
    if steps is not None and reference.step_outputs is not None:
        run.parity["streaming"] = {
            "state": [{"input": name, "output": plan.output_names[i]} for name, i in plan.states],
            **step_parity(list(plan.output_names), reference.step_outputs, steps),
        }
    names = list(info.view.names) if info.view is not None else list(plan.output_names)
    run.stats = _variant_stats(reference, outputs, names, plan, data)
    make = target.latency_runner(variant.path, options)
    if make is not None:
        run.by_threads = _latency(make, plan, data)
        run.latency = run.by_threads[0]
    elif info.latency_note:
        run.notes.append(info.latency_note)


def io_contract(plan: ValidationPlan, data: Dataset, reference: ReferenceResult) -> dict:
    """Per input: the dtype the original model takes (`torch_dtype`) and, for integer inputs, the range of
    values validated (`checked_range`, over the validation data); per output: the dtype it returns."""
    inputs = []
    for name, dtype in plan.input_dtypes:
        entry: dict[str, Any] = {"name": name, "torch_dtype": dtype}
        arr = data.arrays.get(name)
        if arr is not None and arr.size and np.dtype(dtype).kind in "iu":
            entry["checked_range"] = [int(arr.min()), int(arr.max())]
        inputs.append(entry)
    outputs = [
        {"name": name, "torch_dtype": np.asarray(out).dtype.name}
        for name, out in zip(plan.output_names, reference.outputs, strict=True)
    ]
    return {"inputs": inputs, "outputs": outputs}


def _runner(target: Any, variant: ExportedVariant, options: Any, plan: ValidationPlan) -> RunnerInfo:
    return target.runner(variant.path, options, plan.latency.threads[0])


def _variant_stats(
    reference: ReferenceResult, outputs: list[np.ndarray], output_names: list[str], plan: ValidationPlan, data: Dataset
) -> dict:
    """Drift reference: the validation inputs' statistics plus this variant's own outputs on them.

    The variant's outputs (not the original model's) are the reference, so a later drift check of the
    shipped model measures what the data changed, not what quantization changed.
    """
    base = reference.input_stats or reference_statistics(
        _used(data), None, None, task=plan.task, preprocessing=plan.preprocessing
    )
    own = reference_statistics({}, outputs, output_names, task=plan.task, class_output=plan.spec.class_output)
    return {**base, "plans": base["plans"] + own["plans"], "features": base["features"] + own["features"]}


def _latency(make: Any, plan: ValidationPlan, data: Dataset) -> list[dict]:
    """Load time, latency and peak memory of a fresh runner (`make(threads)`) per thread count."""
    first = data.feed(0)
    out = []
    for threads in plan.latency.threads:
        stats = measure_runner(
            lambda t=threads: make(t),
            first,
            threads=threads,
            warmup=plan.latency.warmup,
            runs=plan.latency.runs,
            batch=data.batch,
        )
        out.append(stats.to_dict())
    return out


def failed_export_report(request: VariantRequest, message: str, plan: ValidationPlan) -> VariantResult:
    """A variant whose conversion failed: in the report with its gates failed, never silently missing."""
    status = f"conversion failed: {message}"
    results = gates_mod.evaluate(request.spec, plan.task, {}, plan.gates, status, unvalidated_may_pass=False)
    return VariantResult(request=request, status=status, gates=tuple(g.to_dict() for g in results), passed=False)


def validate_model_file(recipe: Recipe, model_path: Path, quantization: str = "fp32") -> tuple[VariantResult, dict]:
    """Validate one already-exported model (a .tflite file, an .mlpackage folder, ...) against the recipe's
    original model.

    The same checks as a build's validation stage, without converting anything: data checks, the
    original model's outputs, parity, task metrics, latency (where its target measures it) and the gates
    of the `quantization` variant's family. Returns the variant's result and the original model's metrics
    and latency.
    """
    from mobex.artifacts import path_size
    from mobex.data import load_dataset
    from mobex.errors import UsageError
    from mobex.sources import load_model

    model_path = Path(model_path)
    info = plugins.target_for_format(model_path.suffix.removeprefix("."))
    if info is None or not model_path.exists() or model_path.is_dir() != info.model_is_folder:
        kinds = " or ".join(
            f"a .{t.file_format} {'folder' if t.model_is_folder else 'file'}" for t in plugins.targets()
        )
        raise UsageError(f"{model_path} is not {kinds}", "pass a model exported by mobex")
    spec = plugins.find_variant(info.name, quantization)
    if spec is None:
        valid = ", ".join(plugins.variant_hint(info.name))
        raise UsageError(f"--variant {quantization!r} is not a {info.name} variant", f"use one of {valid}")
    target = plugins.target(info.name)
    inputs, outputs = target.read_io(model_path)
    request = VariantRequest((spec.platforms or info.platforms)[0], info.name, quantization, quantization)
    data = load_dataset(recipe, "validation", recipe.data.validation)
    reference = run_reference(load_model(recipe), recipe, data)
    variant = ExportedVariant(
        target=info.name,
        platform=request.platform,
        quantization=quantization,
        path=model_path,
        inputs=list(inputs),
        outputs=list(outputs),
        size_bytes=path_size(model_path),
    )
    plan = ValidationPlan.of(recipe, recipe.output_names(len(reference.outputs)))
    report = validate_variant(BuiltVariant(request, variant), plan, target.options(recipe), data, reference)
    reference_entry = {
        "backend": "torch",
        "metrics": reference.metrics,
        "latency": reference.latency,
        "latency_by_threads": reference.latency_by_threads,
        "data_checks": [c.to_dict() for c in data.checks],
    }
    return report, reference_entry
