"""The ExecuTorch target: `.pte` programs through torch.export and `to_edge_transform_and_lower`, run in
ExecuTorch's own runtime.

Recipes name its variants with the target's prefix, on either platform's `variants`: `"executorch:fp32"`,
`"executorch:int8"` (Android or iOS: XNNPACK is ExecuTorch's CPU backend on both), `"executorch:coreml-fp16"`,
`"executorch:coreml-fp32"` (iOS only). Unprefixed names keep meaning TFLite on Android and Core ML on iOS.

Variants (registered below):
- fp32: the float program lowered with the XNNPACK partitioner (mobex.converters.executorch).
- int8: PT2E with mobex's XNNPACK quantizer, calibrated on the recipe's calibration data, with the accuracy
  work of TFLite int8 that transfers (ReLU6 fused, the recipe's range estimation, cross-layer equalization,
  bias correction, float fallback of the most sensitive ops against the int8 gate limits, checked on held-out
  training samples when [data].training is set): mobex.quantize.executorch.
- coreml-fp16 / coreml-fp32: the program lowered with ExecuTorch's Core ML partitioner (an ML program inside
  the `.pte`, compute precision fp16 / fp32, the recipe's [ios] minimum_deployment_target).

Validation: XNNPACK programs run in ExecuTorch's runtime (`executorch.runtime`, backend `executorch`), with
latency, in the same build as LiteRT. ExecuTorch's Linux runtime has no Core ML backend, so a Core ML program
is validated by running its delegated ML program in mobex's MIL reference interpreter (backend `mil-reference`,
no latency); Core ML's own predict is not run on Linux.

`executorch` is an optional extra: this module registers the target and its variants without importing it;
`preflight` (before any conversion) raises a UsageError with the install command when it is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mobex.artifacts import ExportedVariant, TensorSpec
from mobex.plugins import TargetInfo, VariantRequest, register_target, register_variant

if TYPE_CHECKING:
    import numpy as np

    from mobex.quantize.executorch.static_int8 import EtInt8Options
    from mobex.recipe import Recipe
    from mobex.targets.base import ExportJob, JobInputs, RunnerInfo

NAME = "executorch"
INFO = TargetInfo(
    name=NAME,
    platforms=("android", "ios"),
    default_for=(),
    file_format="pte",
    title="ExecuTorch",
    variant_hint=("fp32", "int8", "coreml-fp16 (iOS)", "coreml-fp32 (iOS)"),
)
BACKEND = "executorch"  # the report's `backend` of numbers from ExecuTorch's runtime
_HOLDOUT_EVERY = 10  # every 10th training sample checks the int8 fallback search, as for TFLite int8


@dataclass(frozen=True)
class ExecutorchOptions:
    """What the ExecuTorch variants read from the recipe ([android], [ios], [quantization], [gates], [data])."""

    min_sdk: int = 24
    deployment_target: str = "iOS16"
    int8: EtInt8Options | None = None
    int8_held_out: str | None = None  # training data whose every 10th sample checks the fallback search


class ExecutorchSession:
    """What the ExecuTorch variants of one export job share: the float model, one example and the data."""

    def __init__(
        self,
        options: ExecutorchOptions,
        model: Any,
        example: dict[str, Any],
        output_names: list[str],
        calibration: list[dict[str, np.ndarray]] | None,
        load_held_out: Any = None,
    ) -> None:
        self.options = options
        self.model = model
        self.example = example
        self.output_names = output_names
        self.calibration = calibration
        self._load_held_out = load_held_out

    def held_out(self) -> list[dict[str, np.ndarray]] | None:
        return self._load_held_out() if self._load_held_out else None

    def convert(self, out: Path, delegate: Any) -> ExportedVariant:
        from mobex.converters.executorch import convert_executorch

        return convert_executorch(self.model, self.example, out, output_names=self.output_names, delegate=delegate)


@register_variant(NAME, "fp32", family="fp32", description="XNNPACK delegate, float32")
def _fp32(session: ExecutorchSession, out: Path) -> ExportedVariant:
    from mobex.converters.executorch import XNNPACK

    return session.convert(out, XNNPACK)


@register_variant(
    NAME,
    "int8",
    family="int8",
    calibration=True,
    compute="int8",
    expected_ops=("XnnpackBackend",),
    description="PT2E static int8 weights and activations (XNNPACK), calibrated, float fallback of sensitive ops",
)
def _int8(session: ExecutorchSession, out: Path) -> ExportedVariant:
    from mobex.quantize.executorch.recipes import quantize_executorch

    made, details = quantize_executorch(
        session.model,
        session.example,
        out,
        calibration=session.calibration,
        output_names=session.output_names,
        options=session.options.int8,
        held_out=session.held_out(),
    )
    return replace(made, details=details.to_dict())


def _coreml(precision: str) -> Any:
    def build(session: ExecutorchSession, out: Path) -> ExportedVariant:
        from mobex.converters.executorch import CoreMLDelegate

        delegate = CoreMLDelegate(minimum_deployment_target=session.options.deployment_target, precision=precision)
        return session.convert(out, delegate)

    return build


for _precision, _family in (("fp16", "fp16"), ("fp32", "fp32")):
    register_variant(
        NAME, f"coreml-{_precision}", family=_family, platforms=("ios",), expected_ops=("CoreMLBackend",),
        description=f"Core ML delegate (ML program inside the .pte), {_precision} compute",
    )(_coreml(_precision))  # fmt: skip


class ExecutorchTarget:
    """`.pte` programs for Android and iOS, validated in ExecuTorch's runtime (Core ML partitions in the MIL
    reference interpreter)."""

    info = INFO

    def options(self, recipe: Recipe) -> ExecutorchOptions:
        held_out = held_out_path(recipe)
        return ExecutorchOptions(
            min_sdk=recipe.android.min_sdk if recipe.android else 24,
            deployment_target=recipe.ios.minimum_deployment_target if recipe.ios else "iOS16",
            int8=et_int8_options(recipe),
            int8_held_out=None if held_out is None else str(recipe.resolve(held_out)),
        )

    def preflight(self, recipe: Recipe, requests: list[VariantRequest]) -> None:
        """The optional extra is installed; the held-out training data of the int8 variant loads."""
        from mobex.runtime.executorch import require_executorch

        spelled = ", ".join(sorted({r.spelled for r in requests}))
        require_executorch(f"variant(s) {spelled}")
        path = held_out_path(recipe)
        if path is not None and any(r.name == "int8" for r in requests):
            from mobex.data import load_dataset

            load_dataset(recipe, "training", path)

    def session(self, job: ExportJob, inputs: JobInputs, out_dir: Path) -> ExecutorchSession:
        options: ExecutorchOptions = job.options
        calibration = list(inputs.calibration.feeds()) if inputs.calibration else None
        return ExecutorchSession(
            options,
            inputs.model,
            inputs.example,
            list(job.output_names),
            calibration,
            load_held_out=lambda: held_out_feeds(options, inputs.recipe),
        )

    def runner(self, path: Path, options: ExecutorchOptions | None, num_threads: int = 1) -> RunnerInfo:
        from mobex.runtime.executorch import COREML_BACKEND, ExecutorchRunner, read_delegation_plan
        from mobex.targets.base import RunnerInfo

        plan = read_delegation_plan(path)
        if COREML_BACKEND in plan.delegates:
            return _coreml_runner(path, num_threads)
        notes: tuple[str, ...] = ()
        if not plan.delegates:
            notes = ("no op runs in XNNPACK: the whole program uses ExecuTorch's portable kernels",)
        elif plan.partitions > 1 or plan.kernels:
            outside = ", ".join(f"{op} x{n}" for op, n in sorted(plan.kernels.items())) or "none"
            notes = (
                f"runs as {plan.partitions} delegate call(s), with kernels outside them ({outside}) on ExecuTorch's "
                "portable kernels in between, which costs latency on CPU",
            )
        return RunnerInfo(ExecutorchRunner(path, num_threads=num_threads), BACKEND, notes, delegation=_delegation(plan))

    def latency_runner(self, path: Path, options: ExecutorchOptions | None) -> Any:
        from mobex.runtime.executorch import COREML_BACKEND, ExecutorchRunner, read_delegation_plan

        if COREML_BACKEND in read_delegation_plan(path).delegates:
            return None  # ExecuTorch's Linux runtime cannot load it; the MIL interpreter's time is nobody's
        return lambda threads: ExecutorchRunner(path, num_threads=threads)

    def read_io(self, path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
        from mobex.runtime.executorch import load_pte_io

        io = load_pte_io(path)
        return list(io.inputs), list(io.outputs)

    def manifest_extras(self, path: Path) -> dict[str, Any]:
        """`runtime`: the ExecuTorch version the app must link, the backends the program calls (each must be
        linked into the app) and the operators it runs outside them (from the kernel libraries)."""
        from mobex.runtime.executorch import executorch_version, read_delegation_plan

        plan = read_delegation_plan(path)
        return {
            "runtime": {
                "name": "executorch",
                "version": executorch_version(),
                "backends": sorted(plan.delegates),
                "kernels": sorted(plan.kernels),
            }
        }

    def bundle_model_path(self, stem: str) -> str:
        return f"model/{stem}.pte"

    def minimum_os(self, options: ExecutorchOptions, platform: str) -> dict[str, Any]:
        if platform == "ios":
            return {"ios": options.deployment_target}
        return {"android_min_sdk": options.min_sdk}


def _delegation(plan: Any) -> dict:
    """The report's `delegation` of a program, read from what ships: its delegate calls (`partitions`), and the
    operators run outside them on ExecuTorch's kernels (calls per op, as `reference`). A `.pte` does not list
    the ops inside a delegate's payload, so `by_op` has only those outside."""
    return {
        "delegate": ", ".join(sorted(plan.delegates)) or None,
        "partitions": plan.partitions,
        "reference_ops": sum(plan.kernels.values()),
        "reference_kernels": "ExecuTorch portable kernels",
        "by_op": {op: {"xnnpack": 0, "reference": n} for op, n in sorted(plan.kernels.items())},
    }


def _coreml_runner(path: Path, num_threads: int) -> RunnerInfo:
    from mobex.errors import UsageError
    from mobex.runtime.executorch import CoreMLDelegateRunner
    from mobex.targets.base import NotRunnable, RunnerInfo

    try:
        runner = CoreMLDelegateRunner(path, num_threads)
    except UsageError as exc:  # e.g. ops outside the Core ML partition: the interpreter alone cannot run it
        raise NotRunnable(str(exc), "mil-reference") from None
    unsupported = runner.unsupported_ops()
    if unsupported:
        raise NotRunnable(f"unsupported op {', '.join(unsupported)}", "mil-reference")
    return RunnerInfo(
        runner,
        "mil-reference",
        notes=(
            "Core ML delegate: its ML program was run in mobex's MIL reference interpreter; ExecuTorch's Core ML "
            "runtime (macOS/iOS only) was not run",
        ),
        latency_note="latency not measured: the MIL reference interpreter is not the Core ML runtime",
    )


def held_out_path(recipe: Recipe) -> Path | None:
    """The training data whose every 10th sample checks the int8 fallback search ([data].training, unless
    [quantization] search_held_out = false). Quantization-aware fine-tuning does not transfer to PT2E."""
    if not recipe.quantization.search_held_out:
        return None
    q = recipe.quantization
    return (q.finetune.data if q.finetune is not None else None) or recipe.data.training


def held_out_feeds(options: ExecutorchOptions, recipe: Recipe) -> list[dict[str, np.ndarray]] | None:
    if options.int8_held_out is None:
        return None
    from mobex.data import load_dataset

    data = load_dataset(recipe, "training", Path(options.int8_held_out))
    return [data.feed(i) for i in range(0, data.num_samples, _HOLDOUT_EVERY)]


def et_int8_options(recipe: Recipe) -> EtInt8Options:
    """The int8 variant's options as `mobex build` makes them: the recipe's [quantization] settings that
    transfer from TFLite int8, and the gate limits of `executorch:int8` (the search aims at those)."""
    from mobex.quantize.executorch.static_int8 import EtInt8Options
    from mobex.targets.base import int8_search_settings

    return EtInt8Options(**int8_search_settings(recipe, NAME))


register_target(INFO, ExecutorchTarget())
