"""What mobex needs of an export target, and the values that cross the export stage's process boundary.

A target module (tflite.py, coreml.py, executorch.py) implements `Target` and registers it and its variants
in mobex.plugins. The pipeline never names a target or a platform: it plans one `ExportJob` per target the
recipe asks for, runs each in a worker process (mobex.export), and validates each `ExportedVariant` with the
runner its target provides.

Variant builders receive the target's export session: the converted base model(s), the calibration data and
the target's options, each made once per job and shared by every variant of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mobex.artifacts import ExportedVariant, TensorSpec
from mobex.plugins import TargetInfo, VariantRequest

if TYPE_CHECKING:
    import numpy as np

    from mobex.data import Dataset
    from mobex.recipe import Recipe


@dataclass(frozen=True)
class ExportJob:
    """One target's share of a build, picklable so a worker process can run it.

    The worker loads the model and the data from `recipe_path` (or the pruned model from `pruned_path`);
    everything a variant builder decides with comes from `options` (the target's own frozen options, made
    from the recipe in the parent) and `requests`.
    """

    target: str
    requests: tuple[VariantRequest, ...]
    recipe_path: str
    workdir: str
    stem: str  # file stem of the exported models: the recipe's model name
    output_names: tuple[str, ...]
    options: Any
    pruned_path: str | None = None
    threads: int = 1
    # mobex.sources.weights_fingerprint of the model the reference run used (None: not loaded, or pruned);
    # the worker checks that the model it loads is that one.
    model_fingerprint: tuple[tuple[str, tuple], ...] | None = None


@dataclass(frozen=True)
class ExportFailure:
    """A variant that could not be made, and why (the report shows it; its gates fail)."""

    request: VariantRequest
    message: str


@dataclass(frozen=True)
class BuiltVariant:
    """A requested variant and the model file made for it."""

    request: VariantRequest
    artifact: ExportedVariant


@dataclass(frozen=True)
class TargetExport:
    """What one export job produced: a variant per request that succeeded, a failure per one that did not."""

    target: str
    variants: tuple[BuiltVariant, ...] = ()
    failures: tuple[ExportFailure, ...] = ()
    seconds: float = 0.0
    log_tail: str = ""


@dataclass(frozen=True)
class JobInputs:
    """What a session starts from, loaded in the worker: the model, one example batch, and the data."""

    model: Any  # torch.nn.Module in eval mode
    example: dict[str, Any]  # input name -> torch.Tensor, in call order
    calibration: Dataset
    recipe: Recipe  # only for loading further data files lazily (int8 training data); builders read `options`


@dataclass(frozen=True)
class RunnerInfo:
    """A runner for an exported model, the backend that produced its numbers, and notes for the report.

    `notes` come before the variant is run; `latency_note`, when set, says after a successful run why no
    latency was measured. `delegation`: which ops run in an accelerating delegate and which on the runtime's
    reference kernels (the report's `delegation`, docs/report-schema.md), when the runtime can tell.
    """

    runner: Any  # has .run(feed) -> list[np.ndarray] in torch output order
    backend: str
    notes: tuple[str, ...] = ()
    latency_note: str | None = None
    delegation: dict | None = None
    # The runner's outputs are in another form than the recipe's (Core ML's Vision detection layout): an object
    # with `names` (its output names) and `evaluate(spec, reference, candidate, labels) -> Evaluation`, which
    # brings the original's outputs to that form (mobex.metrics.vision_detection). None: the recipe's form.
    view: Any = None


class NotRunnable(Exception):
    """This host cannot execute the variant (e.g. an op the reference interpreter lacks); `backend` tried."""

    def __init__(self, message: str, backend: str | None = None) -> None:
        super().__init__(message)
        self.backend = backend


class Target(Protocol):
    """An export format: how to convert to it, run it, time it and ship it."""

    info: TargetInfo

    def options(self, recipe: Recipe) -> Any:
        """The target's frozen, picklable options, read from the recipe once in the parent process."""

    def preflight(self, recipe: Recipe, requests: list[VariantRequest]) -> None:
        """Up-front checks of what the requested variants will read (raise DataError), before any conversion."""

    def session(self, job: ExportJob, inputs: JobInputs, out_dir: Path) -> Any:
        """The object the variant builders of one job share (bases converted lazily, once)."""

    def runner(self, path: Path, options: Any | None, num_threads: int = 1) -> RunnerInfo:
        """The best runner this host has for an exported model (raise to report the variant as not run)."""

    def latency_runner(self, path: Path, options: Any | None) -> Callable[[int], Any] | None:
        """`threads -> fresh runner` for latency measurement, or None when this host cannot time this format."""

    def read_io(self, path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Inputs and outputs of an exported model file, as a bundle's manifest lists them."""

    def manifest_extras(self, path: Path) -> dict[str, Any]:
        """Extra keys of the manifest's `model` section that describe the exported model's native interface."""

    def bundle_model_path(self, stem: str) -> str:
        """Where the model sits in a bundle, e.g. `model/digits-cnn.tflite`."""

    def minimum_os(self, options: Any, platform: str) -> dict[str, Any]:
        """The manifest's `minimum_os` for a bundle of this target on `platform`."""


def feeds_of(data: Dataset | None) -> list[dict[str, np.ndarray]] | None:
    """All batches of a data set as feed dicts (None stays None)."""
    return None if data is None else list(data.feeds())


def int8_search_settings(recipe: Recipe, target: str) -> dict[str, Any]:
    """The [quantization] settings every target's calibrated int8 (TFLite, ExecuTorch) reads the same way, and
    the gate limits of `<target>:int8`, which its fallback search aims at: keyword arguments of its options."""
    from mobex.metrics.limits import limits_for
    from mobex.plugins import variant

    q = recipe.quantization
    limits = limits_for(variant(target, "int8"), recipe.model.task, recipe.gates)
    return {
        "calibration_samples": q.calibration_samples,
        "range_estimation": q.range_estimation,
        "equalize": q.equalize,
        "bias_correction": q.bias_correction,
        "fallback": q.int8_fallback,
        "max_fallback_layers": q.max_fallback_layers,
        "task": recipe.model.task,
        "class_output": recipe.class_output_index(),
        "limits": {metric: limit for metric, (limit, _) in limits.items()},
    }
