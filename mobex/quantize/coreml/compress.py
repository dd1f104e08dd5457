"""Weight compression (and w8a8) of a converted Core ML package with coremltools.optimize.coreml.

Works on the saved .mlpackage (loaded with skip_model_load, so it runs on Linux, where Core ML
itself is absent): each variant rewrites the program's weights into `constexpr_*` ops that the
device decompresses at load time. Activations stay float, so no calibration data is needed, except
for `w8a8`.

`w8a8` (int8 weights and int8 activations, iOS17+) is coremltools' own recipe,
`linear_quantize_activations` followed by `linear_quantize_weights`, with one change: coremltools
measures activation ranges with `MLModel.predict`, which exists only on macOS. mobex measures them by
running the same saved program in its MIL reference interpreter (`mobex.runtime.mil`) on the recipe's
calibration data, with every intermediate tensor added as an output (as coremltools' ModelDebugger
does), and then applies coremltools' graph passes (`insert_prefix/suffix_quantize_dequantize_pair`,
`dequantize_quantize_pair_elimination`) with those ranges. The result is the program coremltools would
write on a Mac, with quantize/dequantize pairs around convolutions, linear layers and adds; the same
interpreter then validates it. Quantizing in torch before conversion (coremltools.optimize.torch) was
the alternative; it needs FX-traceable models and a second conversion, and its fake-quant ops do not
survive the torch.export path mobex converts with.

coremltools skips tensors under 2,048 elements by default; mobex's models are small, so the
default here is 256, which still leaves biases and norm scales alone.

Calibrated weights (`coreml/gptq.py`): coremltools rounds every weight to its nearest int8 level or palette
entry. With calibration data, mobex keeps coremltools' format, scales and palettes but chooses the
stored integers / palette indices by GPTQ (minimising each layer's output error on the calibration
data) and corrects each layer's bias for the mean shift the compressed weights leave. Measured on
EfficientNet-Lite0 (docs/quantization.md): int8-weights 85.5 % -> 98.4 % top-1 agreement. Without
calibration data the weights are coremltools' round-to-nearest, and the notes say so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobex.artifacts import ExportedVariant
from mobex.converters.coreml import package_variant, resolve_target, save_package
from mobex.errors import ConversionError, UsageError
from mobex.quantize.feeds import checked_feeds

DEFAULT_WEIGHT_THRESHOLD = 256
_COREML_DEFAULT_WEIGHT_THRESHOLD = 2048
# Calibration samples w8a8 and the weight rounding run through the MIL reference interpreter (slower than Core ML).
W8A8_MAX_SAMPLES = 64


@dataclass(frozen=True)
class Compression:
    """One Core ML compression, as its variant registers it (mobex.targets.coreml).

    `apply` is the coremltools.optimize.coreml function ("linear_quantize_weights", "palettize_weights",
    "prune_weights"); `config(cto, weight_threshold)` its op config; `expected_ops` the ops the compressed
    program must hold (else nothing was compressed); `min_target` the iOS it needs, with `min_target_why` and
    `min_target_hint` for the error; `activations`: quantize activations first (w8a8, calibrated in the MIL
    reference interpreter). Calibration data, when given, refines the weights of every compression.
    """

    apply: str
    config: Callable[[Any, int], Any]
    details: str
    expected_ops: tuple[str, ...]
    min_target: str = "iOS16"
    min_target_why: str = ""
    min_target_hint: str = ""
    activations: bool = False


def compress_coreml(
    base: ExportedVariant,
    variant: str,
    out_path: Path,
    *,
    compression: Compression,
    deployment_target: str,
    weight_threshold: int = DEFAULT_WEIGHT_THRESHOLD,
    calibration: list[dict[str, np.ndarray]] | None = None,
    max_calibration_samples: int = W8A8_MAX_SAMPLES,
    weight_rounding: str = "gptq",
) -> ExportedVariant:
    """Compress the weights of `base` (an fp16 or fp32 .mlpackage) as `compression` says, into `out_path`.

    Metadata of the base is kept. `calibration` (a list of feeds keyed by input name) is required when the
    compression quantizes activations and optional otherwise: when given, at most `max_calibration_samples`
    of it choose the weights' rounding and correct the biases (`gptq.py`), unless `weight_rounding` is
    "nearest" (coremltools' own rounding, as without calibration data).
    """
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    started = time.perf_counter()
    out_path = Path(out_path)
    target = _check_arguments(base, out_path, deployment_target, weight_threshold, weight_rounding)
    if target < int(getattr(ct.target, compression.min_target)):
        raise UsageError(
            f"{variant} needs {compression.min_target} or later ({compression.min_target_why}); "
            f"the deployment target is {deployment_target}",
            hint=compression.min_target_hint,
        )
    if compression.activations or calibration:
        calibration = _check_calibration(base, calibration, variant)
    mlmodel = _base_model(base, variant, compression, deployment_target, target)
    feeds = _subset(calibration, max_calibration_samples) if calibration else []
    if compression.activations:
        mlmodel = _quantize_activations(mlmodel, base, feeds)
    config = compression.config(cto, weight_threshold)
    try:
        compressed = getattr(cto, compression.apply)(mlmodel, cto.OptimizationConfig(global_config=config))
    except Exception as exc:  # noqa: BLE001 - report coremltools' reason with the variant name
        raise ConversionError(f"coremltools could not apply {variant} to {base.path.name}: {exc}") from exc
    refinement = None
    if feeds and weight_rounding == "gptq":
        from mobex.quantize.coreml.gptq import collect_moments, refine_weights

        compressed, refinement = refine_weights(compressed, collect_moments(base.path, feeds))
    compressed.user_defined_metadata["mobex.compression"] = variant
    save_package(compressed, out_path)
    counts = _compressed_op_counts(out_path, base, compression, weight_threshold, variant)
    notes = [
        f"{variant} from the {base.quantization} base ({compression.details})",
        f"weight_threshold={weight_threshold} (coremltools' default is {_COREML_DEFAULT_WEIGHT_THRESHOLD}): "
        f"smaller tensors stay {base.quantization}",
        "compressed ops: " + ", ".join(f"{op} x{n}" for op, n in sorted(counts.items())),
    ]
    if compression.activations:
        notes.append(
            f"activation ranges: min/max of {len(feeds)} calibration samples run in mobex's MIL reference "
            "interpreter (coremltools' own calibration needs macOS)"
        )
    if refinement is not None:
        notes.append(refinement.summary())
    else:
        why = 'weight_rounding = "nearest"' if feeds else "no calibration data given for this variant"
        notes.append(f"weights rounded to nearest by coremltools ({why})")
    return package_variant(out_path, variant, notes, started)


def _check_arguments(
    base: ExportedVariant, out_path: Path, deployment_target: str, weight_threshold: int, weight_rounding: str
) -> int:
    """The deployment target's spec version, after refusing arguments no compression can work with."""
    import coremltools as ct

    if base.target != "coreml":
        raise UsageError(f"compress_coreml needs a Core ML variant, got a {base.target} one ({base.path})")
    if out_path.suffix != ".mlpackage":
        raise UsageError(f"Core ML output path must end in .mlpackage: {out_path}")
    if weight_threshold < 1:
        raise UsageError(f"weight_threshold must be positive, got {weight_threshold}")
    if weight_rounding not in ("gptq", "nearest"):
        raise UsageError(f"weight_rounding must be 'gptq' or 'nearest', got {weight_rounding!r}")
    target = int(resolve_target(deployment_target))
    if target < int(ct.target.iOS16):
        raise UsageError(
            f"Core ML weight compression needs iOS16 or later; the deployment target is {deployment_target}",
            hint="set [ios] minimum_deployment_target to iOS16 or later, or ship only fp16/fp32",
        )
    return target


def _base_model(base: ExportedVariant, variant: str, compression: Compression, deployment_target: str, target: int):  # noqa: ANN202
    """The base package loaded for compression, refused when its spec and the deployment target disagree."""
    import coremltools as ct

    mlmodel = ct.models.MLModel(str(base.path), skip_model_load=True)
    base_spec_version = mlmodel.get_spec().specificationVersion
    if base_spec_version > target:
        raise UsageError(
            f"the base package {base.path.name} needs a newer OS (spec {base_spec_version}) than the "
            f"deployment target {deployment_target} (spec {target})",
            hint="convert the base with the same deployment target as the compressed variants",
        )
    if base_spec_version < int(getattr(ct.target, compression.min_target)):
        raise UsageError(
            f"{variant} needs a base converted for {compression.min_target} or later; {base.path.name} targets "
            "an older OS",
            hint=f'convert the base with deployment_target="{compression.min_target}"',
        )
    return mlmodel


def _compressed_op_counts(
    out_path: Path, base: ExportedVariant, compression: Compression, weight_threshold: int, variant: str
) -> dict[str, int]:
    """The compressed (and activation-quantization) ops of the written package; refuse one with none."""
    counts = constexpr_op_counts(out_path)
    if compression.activations:
        quant_ops = program_op_counts(out_path)
        if not quant_ops.get("quantize"):
            raise ConversionError(
                f"{variant} inserted no activation quantize ops into {base.path.name}",
                hint="coremltools quantizes the inputs of conv, linear, add and pooling ops; the model has none",
            )
        counts.update({op: quant_ops.get(op, 0) for op in ("quantize", "dequantize")})
    if not any(counts.get(op) for op in compression.expected_ops):
        raise ConversionError(
            f"{variant} left every weight of {base.path.name} uncompressed",
            hint=f"no weight tensor has {weight_threshold} or more elements; lower weight_threshold",
        )
    return counts


def constexpr_op_counts(package: Path) -> dict[str, int]:
    """How many `constexpr_*` ops (compressed weights) each kind the saved program holds."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(package))
    counts: dict[str, int] = {}
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                if op.type.startswith("constexpr_"):
                    counts[op.type] = counts.get(op.type, 0) + 1
    return counts


def program_op_counts(package: Path) -> dict[str, int]:
    """How many ops of each type the saved program's main function holds."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(package))
    counts: dict[str, int] = {}
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                counts[op.type] = counts.get(op.type, 0) + 1
    return counts


def _subset(feeds: list[dict[str, np.ndarray]], limit: int) -> list[dict[str, np.ndarray]]:
    """At most `limit` feeds, evenly spread over the data (deterministic: crops of one picture may be adjacent)."""
    if len(feeds) <= limit:
        return list(feeds)
    picks = np.linspace(0, len(feeds) - 1, limit).round().astype(int)
    return [feeds[i] for i in picks]


def _check_calibration(
    base: ExportedVariant, calibration: list[dict[str, np.ndarray]] | None, variant: str = "w8a8"
) -> list[dict]:
    """Calibration feeds: present (w8a8), named after the inputs, the right shapes, finite, float32."""
    return checked_feeds(
        base.inputs, calibration, variant=variant, drop_hint=f"drop '{variant}'",
        dtype_of=lambda spec: "float32" if spec.dtype.startswith("float") else spec.dtype,
    )  # fmt: skip


def activation_ranges(package: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Min/max of every input and intermediate tensor of a saved program over `feeds`, by MIL var name.

    A copy of the program with every intermediate tensor added as an output (what coremltools'
    ModelDebugger builds for `predict`) runs in the MIL reference interpreter (`int8_mil.run_with_outputs`).
    """
    import coremltools as ct
    from coremltools.optimize.coreml.experimental._model_debugger import ModelDebugger
    from coremltools.optimize.coreml.experimental._post_training_quantization import (
        _adjust_concat_surrounding_activation_stats,
    )

    from mobex.quantize.coreml.gptq import run_with_outputs

    mlmodel = ct.models.MLModel(str(package), skip_model_load=True)
    debugger = ModelDebugger(mlmodel)
    outputs = {o.name for o in mlmodel.get_spec().description.output}
    names = [n for n in debugger.get_intermediate_output_names(lambda op: op.spec.type != "const") if n not in outputs]
    stats: dict[str, dict[str, float]] = {}

    def record(name: str, value: np.ndarray) -> None:
        value = np.asarray(value, dtype=np.float32)
        if value.size == 0:
            return
        lo, hi = float(value.min()), float(value.max())
        entry = stats.setdefault(name, {"rmin": lo, "rmax": hi})
        entry["rmin"], entry["rmax"] = min(entry["rmin"], lo), max(entry["rmax"], hi)

    run_with_outputs(Path(package), names, feeds, record)
    _adjust_concat_surrounding_activation_stats(debugger._get_concat_op_info(), stats)
    return stats


def _quantize_activations(
    mlmodel: Any,
    base: ExportedVariant,
    feeds: list[dict[str, np.ndarray]],
    *,
    mode: str = "linear_symmetric",
    float_ops: tuple[str, ...] = (),
) -> Any:
    """coremltools' linear_quantize_activations, with ranges measured by `activation_ranges` (see module doc).

    `float_ops` (op names) get no quantize/dequantize pair on their inputs."""
    import coremltools.optimize.coreml as cto
    from coremltools import _SPECIFICATION_VERSION_IOS_17
    from coremltools.converters.mil.frontend.milproto import load as milproto_to_pymil
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models import utils as model_utils

    stats = activation_ranges(base.path, feeds)
    config = cto.OptimizationConfig(
        global_config=cto.OpLinearQuantizerConfig(mode=mode), op_name_configs=dict.fromkeys(float_ops)
    )
    passes = []
    for name in (
        "compression::insert_prefix_quantize_dequantize_pair",
        "compression::insert_suffix_quantize_dequantize_pair",
    ):
        graph_pass = PASS_REGISTRY[name]
        graph_pass.set_options([PassOption("config", config), PassOption("activation_stats", stats)])
        passes.append(graph_pass)
    passes.append(PASS_REGISTRY["common::dequantize_quantize_pair_elimination"])
    try:
        return model_utils._apply_graph_pass(
            mlmodel,
            passes,
            spec_version=_SPECIFICATION_VERSION_IOS_17,
            pymil_load_func=milproto_to_pymil.load,
            skip_model_load=True,
        )
    except Exception as exc:  # noqa: BLE001 - report coremltools' reason with the variant name
        raise ConversionError(
            f"coremltools could not insert activation quantization into {base.path.name}: {exc}"
        ) from exc
