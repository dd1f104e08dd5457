"""Weight compression of a converted Core ML package with coremltools.optimize.coreml.

Works on the saved .mlpackage (loaded with skip_model_load, so it runs on Linux, where Core ML
itself is absent): each variant rewrites the program's weights into `constexpr_*` ops that the
device decompresses at load time. Activations stay float, so no calibration data is needed.

coremltools skips tensors under 2,048 elements by default; mobex's models are small, so the
default here is 256, which still leaves biases and norm scales alone.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from mobex.artifacts import ExportedVariant, path_size
from mobex.converters.coreml import read_io, resolve_target, save_package
from mobex.errors import ConversionError, UsageError

DEFAULT_WEIGHT_THRESHOLD = 256
_COREML_DEFAULT_WEIGHT_THRESHOLD = 2048
PALETTE_BITS = (2, 4, 6, 8)

# Which constexpr ops a compressed program holds, per variant family and opset.
EXPECTED_OPS = {
    "int8-weights": ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"),
    "int4-weights": ("constexpr_blockwise_shift_scale",),
    "palettize": ("constexpr_lut_to_dense",),
    "sparse": ("constexpr_sparse_to_dense",),
}


def variant_names() -> list[str]:
    """The fixed variant names (sparse-<pct> takes any whole percentage 1..99)."""
    return ["int8-weights", "int4-weights", *(f"palettize-{b}bit" for b in PALETTE_BITS), "sparse-<pct>"]


def compress_coreml(
    base: ExportedVariant,
    variant: str,
    out_path: Path,
    *,
    deployment_target: str,
    weight_threshold: int = DEFAULT_WEIGHT_THRESHOLD,
) -> ExportedVariant:
    """Compress the weights of `base` (an fp16 or fp32 .mlpackage) into a new package at `out_path`.

    Variants: `int8-weights` (per-channel symmetric int8), `int4-weights` (per-block of 32, iOS18+),
    `palettize-{2,4,6,8}bit` (k-means look-up tables), `sparse-<pct>` (magnitude pruning to pct%
    zeros, stored sparse). Metadata of the base is kept.
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
    target = int(resolve_target(deployment_target))
    if target < int(ct.target.iOS16):
        raise UsageError(
            f"Core ML weight compression needs iOS16 or later; the deployment target is {deployment_target}",
            hint="set [ios] minimum_deployment_target to iOS16 or later, or ship only fp16/fp32",
        )

    family, config, details = _config(cto, variant, weight_threshold)
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

    compress = {
        "int8-weights": cto.linear_quantize_weights,
        "int4-weights": cto.linear_quantize_weights,
        "palettize": cto.palettize_weights,
        "sparse": cto.prune_weights,
    }[family]
    try:
        compressed = compress(mlmodel, cto.OptimizationConfig(global_config=config))
    except Exception as exc:  # noqa: BLE001 - report coremltools' reason with the variant name
        raise ConversionError(f"coremltools could not apply {variant} to {base.path.name}: {exc}") from exc
    compressed.user_defined_metadata["mobex.compression"] = variant
    save_package(compressed, out_path)

    counts = constexpr_op_counts(out_path)
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


def _config(cto: Any, variant: str, weight_threshold: int) -> tuple[str, Any, str]:
    """(family, coremltools op config, human description) for a variant name."""
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
