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

import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from mobex.artifacts import ExportedVariant, path_size
from mobex.converters.coreml import read_io, resolve_target, save_package
from mobex.errors import ConversionError, UsageError
from mobex.quantize.feeds import checked_feeds

DEFAULT_WEIGHT_THRESHOLD = 256
_COREML_DEFAULT_WEIGHT_THRESHOLD = 2048
PALETTE_BITS = (2, 4, 6, 8)

# Which constexpr ops a compressed program holds, per variant family and opset.
EXPECTED_OPS = {
    "int8-weights": ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"),
    "int4-weights": ("constexpr_blockwise_shift_scale",),
    "palettize": ("constexpr_lut_to_dense",),
    "sparse": ("constexpr_sparse_to_dense",),
    "w8a8": ("quantize", "dequantize"),
}
# Calibration samples w8a8 and the weight rounding run through the MIL reference interpreter (slower than Core ML).
W8A8_MAX_SAMPLES = 64
# Variant families whose weights the calibration data refines (GPTQ rounding and/or bias correction).
CALIBRATED_FAMILIES = ("int8-weights", "int4-weights", "palettize", "sparse", "w8a8")


def variant_names() -> list[str]:
    """The fixed variant names (sparse-<pct> takes any whole percentage 1..99)."""
    return ["int8-weights", "int4-weights", "w8a8", *(f"palettize-{b}bit" for b in PALETTE_BITS), "sparse-<pct>"]


def compress_coreml(
    base: ExportedVariant,
    variant: str,
    out_path: Path,
    *,
    deployment_target: str,
    weight_threshold: int = DEFAULT_WEIGHT_THRESHOLD,
    calibration: list[dict[str, np.ndarray]] | None = None,
    max_calibration_samples: int = W8A8_MAX_SAMPLES,
    weight_rounding: str = "gptq",
) -> ExportedVariant:
    """Compress the weights of `base` (an fp16 or fp32 .mlpackage) into a new package at `out_path`.

    Variants: `int8-weights` (per-channel symmetric int8), `int4-weights` (per-block of 32, iOS18+),
    `palettize-{2,4,6,8}bit` (k-means look-up tables), `sparse-<pct>` (magnitude pruning to pct%
    zeros, stored sparse), `w8a8` (int8 activations calibrated on `calibration`, a list of feeds keyed
    by input name, plus per-channel int8 weights; iOS17+). Metadata of the base is kept.

    `calibration` is required for `w8a8` and optional for the others: when given, at most
    `max_calibration_samples` of it choose the weights' rounding and correct the biases (`int8_mil`),
    unless `weight_rounding` is "nearest" (coremltools' own rounding, as without calibration data).
    """
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    started = time.perf_counter()
    if base.target != "coreml":
        raise UsageError(f"compress_coreml needs a Core ML variant, got a {base.target} one ({base.path})")
    out_path = Path(out_path)
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

    family, config, details = _config(cto, variant, weight_threshold)
    if family == "w8a8" and target < int(ct.target.iOS17):
        raise UsageError(
            f"w8a8 needs iOS17 or later (activation quantize/dequantize ops are an iOS17 Core ML feature); "
            f"the deployment target is {deployment_target}",
            hint='set [ios] minimum_deployment_target = "iOS17", or use int8-weights',
        )
    if family == "w8a8" or calibration:
        calibration = _check_calibration(base, calibration, variant)
    if family == "int4-weights" and target < int(ct.target.iOS18):
        raise UsageError(
            f"int4-weights needs iOS18 or later (per-block int4 weights are an iOS18 Core ML feature); "
            f"the deployment target is {deployment_target}",
            hint='set [ios] minimum_deployment_target = "iOS18", or use int8-weights / palettize-4bit',
        )

    mlmodel = ct.models.MLModel(str(base.path), skip_model_load=True)
    base_spec_version = mlmodel.get_spec().specificationVersion
    if base_spec_version > target:
        raise UsageError(
            f"the base package {base.path.name} needs a newer OS (spec {base_spec_version}) than the "
            f"deployment target {deployment_target} (spec {target})",
            hint="convert the base with the same deployment target as the compressed variants",
        )
    if family == "int4-weights" and base_spec_version < int(ct.target.iOS18):
        raise UsageError(
            f"int4-weights needs a base converted for iOS18 or later; {base.path.name} targets an older OS",
            hint='convert the base with deployment_target="iOS18"',
        )

    feeds = _subset(calibration, max_calibration_samples) if calibration else []
    if family == "w8a8":
        mlmodel = _quantize_activations(mlmodel, base, feeds)
    compress = {
        "w8a8": cto.linear_quantize_weights,
        "int8-weights": cto.linear_quantize_weights,
        "int4-weights": cto.linear_quantize_weights,
        "palettize": cto.palettize_weights,
        "sparse": cto.prune_weights,
    }[family]
    try:
        compressed = compress(mlmodel, cto.OptimizationConfig(global_config=config))
    except Exception as exc:  # noqa: BLE001 - report coremltools' reason with the variant name
        raise ConversionError(f"coremltools could not apply {variant} to {base.path.name}: {exc}") from exc
    refinement = None
    if feeds and family in CALIBRATED_FAMILIES and weight_rounding == "gptq":
        from mobex.quantize.coreml.gptq import collect_moments, refine_weights

        compressed, refinement = refine_weights(compressed, collect_moments(base.path, feeds))
    compressed.user_defined_metadata["mobex.compression"] = variant
    save_package(compressed, out_path)

    counts = constexpr_op_counts(out_path)
    if family == "w8a8":
        quant_ops = program_op_counts(out_path)
        if not quant_ops.get("quantize"):
            raise ConversionError(
                f"w8a8 inserted no activation quantize ops into {base.path.name}",
                hint="coremltools quantizes the inputs of conv, linear, add and pooling ops; the model has none",
            )
        counts.update({op: quant_ops.get(op, 0) for op in ("quantize", "dequantize")})
    if not any(counts.get(op) for op in EXPECTED_OPS[family]):
        raise ConversionError(
            f"{variant} left every weight of {base.path.name} uncompressed",
            hint=f"no weight tensor has {weight_threshold} or more elements; lower weight_threshold",
        )
    inputs, outputs = read_io(out_path)
    notes = [
        f"{variant} from the {base.quantization} base ({details})",
        f"weight_threshold={weight_threshold} (coremltools' default is {_COREML_DEFAULT_WEIGHT_THRESHOLD}): "
        f"smaller tensors stay {base.quantization}",
        "compressed ops: " + ", ".join(f"{op} x{n}" for op, n in sorted(counts.items())),
    ]
    if family == "w8a8":
        notes.append(
            f"activation ranges: min/max of {len(feeds)} calibration samples run in mobex's MIL reference "
            "interpreter (coremltools' own calibration needs macOS)"
        )
    if refinement is not None:
        notes.append(refinement.summary())
    elif family in CALIBRATED_FAMILIES:
        why = 'weight_rounding = "nearest"' if feeds else "no calibration data given for this variant"
        notes.append(f"weights rounded to nearest by coremltools ({why})")
    return ExportedVariant(
        target="coreml",
        platform="ios",
        quantization=variant,
        path=out_path,
        inputs=inputs,
        outputs=outputs,
        size_bytes=path_size(out_path),
        seconds=time.perf_counter() - started,
        notes=notes,
    )


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


def _config(cto: Any, variant: str, weight_threshold: int) -> tuple[str, Any, str]:
    """(family, coremltools op config, human description) for a variant name."""
    if variant == "w8a8":
        config = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=weight_threshold
        )
        return variant, config, "int8 activations (calibrated) and int8 symmetric per-channel weights"
    if variant == "int8-weights":
        config = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=weight_threshold
        )
        return variant, config, "int8 symmetric, per output channel"
    if variant == "int4-weights":
        config = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric",
            dtype="int4",
            granularity="per_block",
            block_size=32,
            weight_threshold=weight_threshold,
        )
        return variant, config, "int4 symmetric, per block of 32 input channels"
    match = re.fullmatch(r"palettize-(\d+)bit", variant)
    if match:
        nbits = int(match.group(1))
        if nbits not in PALETTE_BITS:
            raise UsageError(f"unsupported palette size in {variant!r}", hint="use 2, 4, 6 or 8 bits")
        config = cto.OpPalettizerConfig(mode="kmeans", nbits=nbits, weight_threshold=weight_threshold)
        return "palettize", config, f"k-means palette of {2**nbits} values per tensor"
    match = re.fullmatch(r"sparse-(\d+)", variant)
    if match:
        pct = int(match.group(1))
        if not 0 < pct < 100:
            raise UsageError(f"sparsity in {variant!r} must be a whole percentage 1..99")
        config = cto.OpMagnitudePrunerConfig(target_sparsity=pct / 100, weight_threshold=weight_threshold)
        return "sparse", config, f"{pct}% smallest-magnitude weights zeroed, stored as bitmask + values"
    raise UsageError(
        f"unknown Core ML compression variant {variant!r}", hint="use one of " + ", ".join(variant_names())
    )
