"""The Core ML target: coremltools conversion to an ML Program, weight compression, and the runners.

Variants (registered below): `fp32` and `fp16` are conversions with float32 / float16 compute precision
(float32 I/O); the others compress the fp16 conversion's weights with coremltools.optimize.coreml
(mobex.quantize.coreml.compress), each with the op config it registers: `int8-weights` (per-channel
symmetric int8, iOS16), `int4-weights` (per block of 32, iOS18), `palettize-<2|4|6|8>bit` (k-means look-up
tables, iOS16), `sparse-<1..99>` (magnitude pruning stored sparse, iOS16), `w8a8` (int8 activations
calibrated in the MIL reference interpreter plus int8 weights, iOS17), `palettize-4bit-grouped` (a 16-value palette per
group of 16 output channels, iOS18: channels of very different scales no longer share one palette).

Validation: `MLModel.predict` on macOS (backend `coreml-runtime`, not exercised in this project's CI), else
mobex's MIL reference interpreter of the saved program (backend `mil-reference`), which has no latency.
"""

from __future__ import annotations

import platform as host_platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mobex.artifacts import ExportedVariant, TensorSpec
from mobex.plugins import TargetInfo, VariantRequest, register_target, register_variant

if TYPE_CHECKING:
    import numpy as np

    from mobex.converters.coreml import CoreMLMetadata
    from mobex.quantize.coreml.compress import Compression
    from mobex.recipe import Recipe
    from mobex.targets.base import ExportJob, JobInputs, RunnerInfo

NAME = "coreml"
PALETTE_BITS = (2, 4, 6, 8)
INFO = TargetInfo(
    name=NAME,
    platforms=("ios",),
    default_for=("ios",),
    file_format="mlpackage",
    title="Core ML",
    variant_hint=(
        "fp32",
        "fp16",
        "int8-weights",
        "int4-weights",
        "w8a8",
        "palettize-<2|4|6|8>bit",
        "palettize-4bit-grouped",
        "sparse-<1..99>",
    ),
    takes_torchscript=True,
    model_is_folder=True,
    int64_as_int32=True,  # Core ML has no int64 multi-arrays: coremltools makes int64 inputs int32
)


@dataclass(frozen=True)
class CoremlOptions:
    """What the Core ML variants read from the recipe ([ios], [quantization], [model] metadata)."""

    deployment_target: str = "iOS16"
    compute_units: str = "cpu_only"
    weight_rounding: str = "gptq"
    metadata: CoreMLMetadata | None = None


class CoremlSession:
    """What the Core ML variants of one export job share: a conversion per precision (made once) and the data."""

    def __init__(
        self,
        options: CoremlOptions,
        calibration: list[dict[str, np.ndarray]] | None,
        convert: Any,
        weight_threshold: int | None = None,
        max_calibration_samples: int | None = None,
    ) -> None:
        self.options = options
        self.calibration = calibration
        self._convert = convert  # precision -> ExportedVariant
        self._bases: dict[str, ExportedVariant | BaseException] = {}
        # None: mobex's defaults (compress.DEFAULT_WEIGHT_THRESHOLD, compress.W8A8_MAX_SAMPLES)
        self.weight_threshold = weight_threshold
        self.max_calibration_samples = max_calibration_samples

    def ship(self, program: ExportedVariant, out: Path) -> ExportedVariant:
        """The variant as shipped: the ML program itself, or (an NMS detection layout) the pipeline of it and a
        NonMaximumSuppression model, written to `out` (mobex.converters.coreml_detection)."""
        from mobex.converters.coreml import wrap_nms
        from mobex.converters.coreml_detection import nms_layout

        layout = nms_layout(program.path)
        if layout is None:
            return program
        import time
        from dataclasses import replace as _replace

        from mobex.converters.coreml import package_variant

        started = time.perf_counter()
        wrap_nms(program.path, out, layout)
        shipped = package_variant(out, program.quantization, list(program.notes), started)
        return _replace(shipped, seconds=program.seconds + shipped.seconds, details=program.details)

    def base(self, precision: str) -> ExportedVariant:
        """The `precision` ("fp32"/"fp16") conversion; a failure is kept and re-raised for every variant."""
        if precision not in self._bases:
            try:
                self._bases[precision] = self._convert(precision)
            except Exception as exc:
                self._bases[precision] = exc
        made = self._bases[precision]
        if isinstance(made, BaseException):
            raise made
        return made

    def compress(self, name: str, out: Path, compression: Compression) -> ExportedVariant:
        """Compress the fp16 conversion. Every compressed variant gets the calibration data: it chooses the
        weights' rounding and corrects the biases (mobex.quantize.coreml.gptq), besides calibrating w8a8."""
        from mobex.quantize.coreml.compress import DEFAULT_WEIGHT_THRESHOLD, W8A8_MAX_SAMPLES, compress_coreml

        program = (
            out.with_name(out.stem + "-program.mlpackage") if self.base("fp16").path.stem.endswith("-program") else out
        )
        made = compress_coreml(
            self.base("fp16"),
            name,
            program,
            compression=compression,
            deployment_target=self.options.deployment_target,
            weight_threshold=self.weight_threshold or DEFAULT_WEIGHT_THRESHOLD,
            calibration=self.calibration,
            max_calibration_samples=self.max_calibration_samples or W8A8_MAX_SAMPLES,
            weight_rounding=self.options.weight_rounding,
        )
        return self.ship(made, out)


@register_variant(NAME, "fp32", family="fp32", description="ML program, float32 compute")
def _fp32(session: CoremlSession, out: Path) -> ExportedVariant:
    return session.ship(session.base("fp32"), out)


@register_variant(NAME, "fp16", family="fp16", description="ML program, float16 compute")
def _fp16(session: CoremlSession, out: Path) -> ExportedVariant:
    return session.ship(session.base("fp16"), out)


def _linear(dtype: str, granularity: str, **extra: Any) -> Any:
    return lambda cto, threshold: cto.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype=dtype, granularity=granularity, weight_threshold=threshold, **extra
    )


def register_compression(name: str, *, family: str, description: str, calibration: bool = False,
                         compute: str = "float", **compression: Any) -> None:  # fmt: skip
    """Register Core ML variant `name` as a compression of the fp16 conversion. `compression` holds the fields of
    mobex.quantize.coreml.compress.Compression (made when the variant is built, so the registry stays light);
    its `min_target` and `expected_ops` are also the variant's `min_os` and `expected_ops`."""
    min_target = compression.setdefault("min_target", "iOS16")

    @register_variant(NAME, name, family=family, min_os=min_target, calibration=calibration,
                      expected_ops=compression["expected_ops"], description=description, compute=compute)  # fmt: skip
    def build(session: CoremlSession, out: Path) -> ExportedVariant:
        from mobex.quantize.coreml.compress import Compression

        return session.compress(name, out, Compression(**compression))


_LINEAR_OPS = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale")

register_compression(
    "int8-weights", family="int8", description="linear per-channel int8 weights",
    apply="linear_quantize_weights", config=_linear("int8", "per_channel"),
    details="int8 symmetric, per output channel", expected_ops=_LINEAR_OPS,
)  # fmt: skip
register_compression(
    "int4-weights", family="low-bit", description="per-block int4 weights",
    apply="linear_quantize_weights", config=_linear("int4", "per_block", block_size=32),
    details="int4 symmetric, per block of 32 input channels", expected_ops=("constexpr_blockwise_shift_scale",),
    min_target="iOS18", min_target_why="per-block int4 weights are an iOS18 Core ML feature",
    min_target_hint='set [ios] minimum_deployment_target = "iOS18", or use int8-weights / palettize-4bit',
)  # fmt: skip
register_compression(
    "w8a8", family="int8", description="int8 activations (calibrated) and int8 weights", calibration=True,
    apply="linear_quantize_weights", config=_linear("int8", "per_channel"),
    details="int8 activations (calibrated) and int8 symmetric per-channel weights",
    expected_ops=("quantize", "dequantize"),
    min_target="iOS17", min_target_why="activation quantize/dequantize ops are an iOS17 Core ML feature",
    min_target_hint='set [ios] minimum_deployment_target = "iOS17", or use int8-weights', activations=True,
    compute="int8",
)  # fmt: skip


def _palette(bits: int) -> Any:
    return lambda cto, threshold: cto.OpPalettizerConfig(mode="kmeans", nbits=bits, weight_threshold=threshold)


def _pruned(percent: int) -> Any:
    return lambda cto, threshold: cto.OpMagnitudePrunerConfig(target_sparsity=percent / 100, weight_threshold=threshold)


for _bits in PALETTE_BITS:
    register_compression(
        f"palettize-{_bits}bit", family="int8" if _bits == 8 else "low-bit",
        description=f"k-means palette, {_bits} bits", apply="palettize_weights", config=_palette(_bits),
        details=f"k-means palette of {2**_bits} values per tensor",
        expected_ops=("constexpr_lut_to_dense",),
    )  # fmt: skip
register_compression(
    "palettize-4bit-grouped", family="low-bit", description="k-means palettes per group of 16 output channels, 4 bits",
    apply="palettize_weights", details="k-means palette of 16 values per group of 16 output channels",
    config=lambda cto, threshold: cto.OpPalettizerConfig(
        mode="kmeans", nbits=4, granularity="per_grouped_channel", group_size=16, weight_threshold=threshold
    ),
    expected_ops=("constexpr_lut_to_dense",), min_target="iOS18",
    min_target_why="palettes per group of channels are an iOS18 Core ML feature",
    min_target_hint='set [ios] minimum_deployment_target = "iOS18", or use palettize-4bit (one palette per tensor)',
)  # fmt: skip
for _percent in range(1, 100):
    register_compression(
        f"sparse-{_percent}", family="low-bit", description=f"{_percent}% of weights pruned, stored sparse",
        apply="prune_weights", config=_pruned(_percent),
        details=f"{_percent}% smallest-magnitude weights zeroed, stored as bitmask + values",
        expected_ops=("constexpr_sparse_to_dense",),
    )  # fmt: skip


def _detection_options(recipe: Recipe) -> Any:
    from mobex.converters.coreml_detection import DetectionOptions

    d, ios = recipe.detection, recipe.ios
    if d is None:
        return None
    return DetectionOptions(
        d.scores, d.boxes, d.box_format, d.box_units, d.score_activation, d.background_class, d.score_threshold,
        d.iou_threshold, d.max_detections, ios.detection_layout if ios else None, ios.nms if ios else None,
    )  # fmt: skip


def swift_type_name(name: str) -> str:
    """'digits-cnn' -> 'DigitsCnn': Xcode turns the .mlpackage file name into a Swift class name."""
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", name) if p]
    joined = "".join(p[:1].upper() + p[1:] for p in parts) or "Model"
    return joined if not joined[0].isdigit() else "Model" + joined


class CoremlTarget:
    """Core ML ML Programs for iOS, validated in Core ML on macOS or in the MIL reference interpreter elsewhere."""

    info = INFO

    def options(self, recipe: Recipe) -> CoremlOptions:
        from mobex.converters.coreml import CoreMLMetadata

        ios = recipe.ios
        metadata = CoreMLMetadata(
            name=recipe.model.name,
            version=recipe.model.version,
            description=recipe.model.description,
            author=recipe.model.author,
            license=recipe.model.license,
            input_descriptions={i.name: i.description for i in recipe.inputs if i.description},
            output_descriptions={o.name: o.description for o in recipe.outputs if o.description},
            labels=recipe.labels(),
            extra={"mobex.recipe_sha256": recipe.sha256},
            preprocessing=recipe.preprocessing,
            task=recipe.model.task,
            image_input=ios.image_input if ios else True,
            classifier=ios.classifier if ios else None,
            detection=_detection_options(recipe),
        )
        return CoremlOptions(
            deployment_target=ios.minimum_deployment_target if ios else "iOS16",
            compute_units=ios.compute_units if ios else "cpu_only",
            weight_rounding=recipe.quantization.weight_rounding,
            metadata=metadata,
        )

    def preflight(self, recipe: Recipe, requests: list[VariantRequest]) -> None:
        """Nothing beyond the calibration-sample check every calibrated variant gets."""

    def session(self, job: ExportJob, inputs: JobInputs, out_dir: Path) -> CoremlSession:
        from mobex.converters.coreml import convert_coreml

        options: CoremlOptions = job.options

        # A detector with the NMS pipeline ships `<stem>-<variant>.mlpackage` as a pipeline of the ML program
        # converted (and compressed) under `...-program.mlpackage` (CoremlSession.ship).
        meta = options.metadata
        wraps = (
            meta is not None
            and meta.task == "detection"
            and meta.detection is not None
            and (meta.detection.nms is not False and meta.detection.layout != "raw")
        )
        suffix = "-program" if wraps else ""

        def convert(precision: str) -> ExportedVariant:
            return convert_coreml(
                inputs.model,
                inputs.example,
                out_dir / f"{job.stem}-{precision}{suffix}.mlpackage",
                precision=precision,
                deployment_target=options.deployment_target,
                output_names=list(job.output_names),
                metadata=options.metadata,
            )

        calibration = list(inputs.calibration.feeds()) if inputs.calibration else None
        return CoremlSession(options, calibration, convert)

    def runner(self, path: Path, options: CoremlOptions | None, num_threads: int = 1) -> RunnerInfo:
        from mobex.converters.coreml_detection import has_detection_layout
        from mobex.targets.base import NotRunnable, RunnerInfo

        vision = has_detection_layout(path)
        if host_platform.system() == "Darwin" and not vision:
            from mobex.runtime.coreml_runtime import CoreMLRuntimeRunner

            units = (options or CoremlOptions()).compute_units
            return RunnerInfo(CoreMLRuntimeRunner(path, compute_units=units), "coreml-runtime")
        from mobex.runtime.mil.interpreter import MilReferenceRunner

        runner = MilReferenceRunner(path)
        unsupported = runner.unsupported_ops()
        if unsupported:
            raise NotRunnable(f"unsupported op {', '.join(unsupported)}", "mil-reference")
        view, notes = None, ()
        if runner.detection is not None:
            from mobex.metrics.vision_detection import VisionDetectionView

            nms = runner.detection.nms
            view = VisionDetectionView(runner.detection.layout, nms.record() if nms is not None else None)
            notes = (
                "Vision detection layout validated in the MIL reference interpreter"
                + (" and mobex's numpy NMS stage (the NonMaximumSuppression spec as mobex reads it)" if nms else "")
                + ": Core ML's own predict and Vision do not run here"
                + (
                    " (on macOS the Core ML runtime runner does not map this layout yet, so the interpreter runs it)"
                    if host_platform.system() == "Darwin"
                    else ""
                ),
            )
        return RunnerInfo(
            runner,
            "mil-reference",
            notes=notes,
            latency_note="latency not measured: the MIL reference interpreter is not the Core ML runtime",
            view=view,
        )

    def latency_runner(self, path: Path, options: CoremlOptions | None) -> Any:
        return None  # MLModel.predict latency on a Mac is not the phone's; the interpreter's is nobody's

    def read_io(self, path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
        from mobex.converters.coreml import read_io

        return read_io(path)

    def manifest_extras(self, path: Path) -> dict[str, Any]:
        """`image_inputs` and `classifier` when the package has a Core ML image input or classifier outputs."""
        from mobex.converters.coreml import read_interface

        return read_interface(path)

    def bundle_model_path(self, stem: str) -> str:
        return f"model/{swift_type_name(stem)}.mlpackage"

    def minimum_os(self, options: CoremlOptions, platform: str) -> dict[str, Any]:
        return {"ios": options.deployment_target}


def compress_variant(
    base: ExportedVariant,
    name: str,
    out_path: Path,
    *,
    deployment_target: str,
    calibration: list[dict[str, np.ndarray]] | None = None,
    weight_rounding: str = "gptq",
    weight_threshold: int | None = None,
    max_calibration_samples: int | None = None,
) -> ExportedVariant:
    """Build one registered compressed Core ML variant from an fp16/fp32 conversion you already have (tests,
    benchmarks): the same builder `mobex build` runs."""
    from mobex.errors import UsageError
    from mobex.plugins import find_variant, variant_hint

    spec = find_variant(NAME, name)
    if spec is None or name in ("fp32", "fp16"):
        valid = ", ".join(v for v in variant_hint(NAME) if v not in ("fp32", "fp16"))
        raise UsageError(f"unknown Core ML compression variant {name!r}", hint=f"use one of {valid}")
    options = CoremlOptions(deployment_target=deployment_target, weight_rounding=weight_rounding)
    session = CoremlSession(options, calibration, lambda precision: base, weight_threshold, max_calibration_samples)
    return spec.build(session, Path(out_path))


register_target(INFO, CoremlTarget())
