"""The TFLite / LiteRT target: litert-torch conversion, ai-edge-quantizer variants, the LiteRT interpreter.

Variants (each registered below with the ai-edge-quantizer recipe it applies; weights; compute):
- fp32: the litert-torch conversion (fp32; fp32)
- fp16: FLOAT_CASTING weight-only, 16-bit float, on FC/conv/embedding ops (fp16 + DEQUANTIZE; fp32).
  ai-edge-quantizer has no named fp16 recipe; this is the form TFLite's classic "float16 quantization" made.
- dynamic-int8: `dynamic_wi8_afp32` for CONV_2D/FULLY_CONNECTED (int8 per-channel; int8, activations
  quantized at run time) with DEPTHWISE_CONV_2D weight-only (int8 per-channel; fp32). Measured on
  EfficientNet-Lite0: hybrid depthwise kernels are both the least accurate (per-tensor run-time int8 of
  9-tap filters) and outside XNNPACK; with float depthwise compute the variant went from 82 % to 95 % top-1
  agreement and from 25 ms to 6 ms (x86, 1 thread), for 0.1 % more bytes. Depthwise is ~2 % of the MACs.
- int8-weights: `weight_only_wi8_afp32` (int8 per-channel; fp32)
- int4-weights: `weight_only_wi4_afp32` (int4 per-channel; fp32)
- int8: `static_wi8_ai8`, calibrated (int8 per-channel; int8 with static activation ranges), made by
  mobex.quantize.tflite.static_int8 (ranges, equalization, GPTQ, bias correction, float fallback search).

Validation runs the model in ai-edge-litert's interpreter with XNNPACK, the kernels Android uses on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mobex.artifacts import ExportedVariant, TensorSpec
from mobex.plugins import TargetInfo, VariantRequest, register_target, register_variant

if TYPE_CHECKING:
    import numpy as np

    from mobex.converters.tflite_metadata import TfliteMetadata
    from mobex.quantize.tflite.static_int8 import Int8Options
    from mobex.recipe import Recipe
    from mobex.targets.base import ExportJob, JobInputs, RunnerInfo

NAME = "tflite"
INFO = TargetInfo(
    name=NAME,
    platforms=("android",),
    default_for=("android",),
    file_format="tflite",
    title="TFLite",
    variant_hint=("fp32", "fp16", "dynamic-int8", "int8-weights", "int4-weights", "int8"),
    int64_as_int32=True,  # litert-torch lowers int64 inputs (token ids) to int32 tensors
)
# Every 10th training sample (at most 256) checks the int8 fallback search (mobex.quantize.tflite.static_int8).
_HOLDOUT_EVERY = 10


@dataclass(frozen=True)
class TfliteOptions:
    """What the TFLite variants read from the recipe ([android], [quantization], [gates], [data].training)."""

    min_sdk: int = 24
    int8_io: bool = False
    int8: Int8Options | None = None
    weight_rounding: str = "gptq"
    int8_training: str | None = None  # data file the int8 variant trains on or checks its search with
    int8_training_all: bool = False  # True: all of it ([quantization.finetune]); False: every 10th sample
    metadata: TfliteMetadata | None = None  # written into every variant (mobex.converters.tflite_metadata)


class TfliteSession:
    """What the TFLite variants of one export job share: the fp32 conversion (made once) and the data."""

    def __init__(
        self,
        options: TfliteOptions,
        calibration: list[dict[str, np.ndarray]] | None,
        convert: Any = None,
        base: ExportedVariant | None = None,
        load_training: Any = None,
    ) -> None:
        self.options = options
        self.calibration = calibration
        self._convert = convert
        self._base = base
        self._error: BaseException | None = None
        self._load_training = load_training

    def base(self) -> ExportedVariant:
        """The fp32 conversion; a failure is kept and re-raised for every variant (converted once)."""
        if self._base is None and self._error is None:
            try:
                self._base = self._convert()
            except Exception as exc:
                self._error = exc
        if self._error is not None:
            raise self._error
        assert self._base is not None
        return self._base

    def training(self) -> tuple[list[dict] | None, list[dict] | None]:
        """(training, held_out) feeds for the static int8 variant, loaded on first use."""
        return self._load_training() if self._load_training else (None, None)

    def apply(
        self,
        name: str,
        out: Path,
        recipe: list[dict[str, Any]],
        description: str,
        max_ratio: float,
        calibrated: bool = False,
    ) -> ExportedVariant:
        """One ai-edge-quantizer recipe on the fp32 model; `calibrated`: GPTQ weight levels from calibration data."""
        from mobex.quantize.tflite.recipes import apply_recipe

        return apply_recipe(
            self.base(),
            name,
            out,
            recipe=recipe,
            description=description,
            max_ratio=max_ratio,
            calibration=self.calibration if calibrated else None,
            weight_rounding=self.options.weight_rounding if calibrated else None,
        )


@register_variant(NAME, "fp32", family="fp32", description="litert-torch conversion, float32")
def _fp32(session: TfliteSession, out: Path) -> ExportedVariant:
    from mobex.quantize.tflite.recipes import copy_fp32

    base = session.base()
    return base if Path(out).resolve() == Path(base.path).resolve() else copy_fp32(base, out)


@register_variant(
    NAME, "fp16", family="fp16", expected_ops=("DEQUANTIZE",), description="float16 weights, float32 compute"
)
def _fp16(session: TfliteSession, out: Path) -> ExportedVariant:
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    ops = qtyping.TFLOperationName
    manager = recipe_manager.RecipeManager()
    config = qtyping.OpQuantizationConfig(
        weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
        compute_precision=qtyping.ComputePrecision.FLOAT,
        explicit_dequantize=True,
    )
    for op in (ops.FULLY_CONNECTED, ops.CONV_2D, ops.DEPTHWISE_CONV_2D, ops.CONV_2D_TRANSPOSE, ops.EMBEDDING_LOOKUP):
        manager.add_quantization_config(".*", op, config, algorithm_key=AlgorithmName.FLOAT_CASTING)
    description = "float_casting weight-only fp16 (fp16 weights, float compute)"
    return session.apply("fp16", out, manager.get_quantization_recipe(), description, max_ratio=0.6)


@register_variant(
    NAME, "dynamic-int8", family="int8", compute="int8", description="int8 weights, activations quantized on the fly"
)
def _dynamic_int8(session: TfliteSession, out: Path) -> ExportedVariant:
    from ai_edge_quantizer import qtyping, recipe, recipe_manager

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    manager.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.DEPTHWISE_CONV_2D, num_bits=8)
    description = (
        "dynamic_wi8_afp32 (int8 weights, dynamic int8 activations) with depthwise convolutions weight-only "
        "(int8 weights, float compute)"
    )
    return session.apply("dynamic-int8", out, manager.get_quantization_recipe(), description, 0.4, calibrated=True)


@register_variant(NAME, "int8-weights", family="int8", description="int8 weights only, float compute")
def _int8_weights(session: TfliteSession, out: Path) -> ExportedVariant:
    from ai_edge_quantizer import recipe

    description = "weight_only_wi8_afp32 (int8 weights, float compute)"
    return session.apply("int8-weights", out, recipe.weight_only_wi8_afp32(), description, 0.4, calibrated=True)


@register_variant(NAME, "int4-weights", family="low-bit", description="int4 weights only, float compute")
def _int4_weights(session: TfliteSession, out: Path) -> ExportedVariant:
    from ai_edge_quantizer import recipe

    description = "weight_only_wi4_afp32 (int4 weights, float compute)"
    return session.apply("int4-weights", out, recipe.weight_only_wi4_afp32(), description, 0.3)


@register_variant(
    NAME,
    "int8",
    family="int8",
    calibration=True,
    expected_ops=("QUANTIZE", "DEQUANTIZE"),
    description="static int8 weights and activations, calibrated",
    compute="int8",
)
def _int8(session: TfliteSession, out: Path) -> ExportedVariant:
    from mobex.quantize.tflite.recipes import static_int8_variant

    io = "int8 I/O" if session.options.int8_io else "float I/O"
    training, held_out = session.training()
    return static_int8_variant(
        session.base(),
        out,
        description=f"static_wi8_ai8 (int8 weights and activations, {io})",
        calibration=session.calibration,
        int8_io=session.options.int8_io,
        int8=session.options.int8,
        training=training,
        held_out=held_out,
    )


class TfliteTarget:
    """TFLite files for Android, run in LiteRT's interpreter (XNNPACK) for validation and latency."""

    info = INFO

    def options(self, recipe: Recipe) -> TfliteOptions:
        from mobex.converters.tflite_metadata import metadata_from_recipe

        q = recipe.quantization
        training = int8_training_path(recipe)
        android = recipe.android
        return TfliteOptions(
            min_sdk=android.min_sdk if android else 24,
            int8_io=android.int8_io if android else False,
            int8=int8_options(recipe),
            weight_rounding=q.weight_rounding,
            int8_training=None if training is None else str(recipe.resolve(training)),
            int8_training_all=q.finetune is not None,
            metadata=metadata_from_recipe(recipe),
        )

    def preflight(self, recipe: Recipe, requests: list[VariantRequest]) -> None:
        """Load (and so check: shapes, dtypes, NaN/inf) the training data the int8 variant will use."""
        if not any(r.name == "int8" for r in requests):
            return
        path = int8_training_path(recipe)
        if path is not None:
            from mobex.data import load_dataset

            load_dataset(recipe, "training", path)

    def session(self, job: ExportJob, inputs: JobInputs, out_dir: Path) -> TfliteSession:
        from mobex.converters.tflite import convert_tflite

        def convert() -> ExportedVariant:
            path = out_dir / f"{job.stem}-fp32.tflite"
            return convert_tflite(
                inputs.model, inputs.example, path, output_names=list(job.output_names), metadata=job.options.metadata
            )

        calibration = list(inputs.calibration.feeds())
        return TfliteSession(
            job.options, calibration, convert, load_training=lambda: int8_training_feeds(job.options, inputs.recipe)
        )

    def runner(self, path: Path, options: TfliteOptions | None, num_threads: int = 1) -> RunnerInfo:
        from mobex.runtime.litert import TfliteRunner
        from mobex.targets.base import RunnerInfo

        runner = TfliteRunner(path, num_threads=num_threads)
        delegation = runner.delegation()
        partitions = None if delegation is None else delegation.partitions
        notes: tuple[str, ...] = ()
        if partitions == 0:
            notes = ("no op runs in XNNPACK: the whole graph uses LiteRT's reference kernels",)
        elif partitions is not None and partitions > 1:
            notes = (
                f"runs as {partitions} XNNPACK partitions: ops XNNPACK has no kernel for in this precision run "
                "on LiteRT's reference kernels in between, which costs latency on CPU",
            )
        return RunnerInfo(runner, "litert", notes, delegation=None if delegation is None else delegation.to_dict())

    def latency_runner(self, path: Path, options: TfliteOptions | None) -> Any:
        from mobex.runtime.litert import TfliteRunner

        return lambda threads: TfliteRunner(path, num_threads=threads)

    def read_io(self, path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
        from mobex.runtime.litert import load_tflite_io

        io = load_tflite_io(path)
        return list(io.inputs), list(io.outputs)

    def manifest_extras(self, path: Path) -> dict[str, Any]:
        return {}  # names, normalisation and labels are in the .tflite's own metadata

    def bundle_model_path(self, stem: str) -> str:
        return f"model/{stem}.tflite"

    def minimum_os(self, options: TfliteOptions, platform: str) -> dict[str, Any]:
        return {"android_min_sdk": options.min_sdk}


def int8_training_path(recipe: Recipe) -> Path | None:
    """The training data the static int8 variant reads: what [quantization.finetune] trains on, else (with
    `search_held_out`) [data].training, whose every 10th sample checks the fallback search. None: neither."""
    q = recipe.quantization
    if q.finetune is not None:
        return q.finetune.data or recipe.data.training
    return recipe.data.training if q.search_held_out else None


def int8_training_feeds(options: TfliteOptions, recipe: Recipe) -> tuple[list[dict] | None, list[dict] | None]:
    """(training, held_out) feeds for the static int8 variant: with [quantization.finetune] all of its training
    data (fine-tuning holds every 10th sample out itself); else every 10th sample, for the fallback search's
    check; else neither. `recipe` only says how to read the data file (its inputs and checks)."""
    if options.int8_training is None:
        return None, None
    from mobex.data import load_dataset

    data = load_dataset(recipe, "training", Path(options.int8_training))
    if options.int8_training_all:
        return list(data.feeds()), None
    return None, [data.feed(i) for i in range(0, data.num_samples, _HOLDOUT_EVERY)]


def int8_options(recipe: Recipe) -> Int8Options:
    """The static int8 variant's options as `mobex build` makes them: the recipe's [quantization] table and the
    int8 gate limits."""
    from mobex.quantize.tflite.qat import FinetuneSettings
    from mobex.quantize.tflite.static_int8 import Int8Options
    from mobex.targets.base import int8_search_settings

    q = recipe.quantization
    finetune = None  # the recipe's [quantization.finetune] keys are FinetuneSettings' own, plus two for the search
    if q.finetune is not None:
        finetune = FinetuneSettings(**q.finetune.model_dump(exclude={"fallback_trials", "data"}))
    return Int8Options(
        **int8_search_settings(recipe, NAME),
        weight_rounding=q.weight_rounding,
        finetune=finetune,
        finetune_fallback_trials=0 if q.finetune is None else q.finetune.fallback_trials,
    )


def quantize_tflite(
    base: ExportedVariant,
    name: str,
    out_path: Path,
    *,
    calibration: list[dict[str, np.ndarray]] | None = None,
    int8_io: bool = False,
    int8: Int8Options | None = None,
    weight_rounding: str | None = None,
    training: list[dict[str, np.ndarray]] | None = None,
    held_out: list[dict[str, np.ndarray]] | None = None,
) -> ExportedVariant:
    """Build one registered TFLite variant from an fp32 conversion `base` you already have (tests, benchmarks).

    The same builder `mobex build` runs; `int8` and `weight_rounding` default to the recipe defaults.
    """
    from mobex.errors import UsageError

    spec = _spec_or_error(name)
    if int8_io and name != "int8":
        raise UsageError(f"int8 I/O needs the static 'int8' variant, not {name!r}")
    rounding = weight_rounding or (int8.weight_rounding if int8 is not None else "gptq")
    options = TfliteOptions(int8_io=int8_io, int8=int8, weight_rounding=rounding)
    session = TfliteSession(options, calibration, base=base, load_training=lambda: (training, held_out))
    return spec.build(session, Path(out_path))


def _spec_or_error(name: str) -> Any:
    from mobex.errors import UsageError
    from mobex.plugins import find_variant, variant_hint

    spec = find_variant(NAME, name)
    if spec is None:
        valid = ", ".join(variant_hint(NAME))
        raise UsageError(f"unknown TFLite variant {name!r}", hint=f"[android] variants can be: {valid}")
    return spec


register_target(INFO, TfliteTarget())
