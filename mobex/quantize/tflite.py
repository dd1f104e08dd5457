"""Quantized variants of a float .tflite with ai-edge-quantizer, one recipe per variant name.

Variant -> ai-edge-quantizer recipe (weights; compute):
- fp32: none, a copy of the converted model (fp32; fp32)
- fp16: FLOAT_CASTING weight-only, 16-bit float, on FC/conv/embedding ops (fp16 + DEQUANTIZE; fp32)
- dynamic-int8: `recipe.dynamic_wi8_afp32()` (int8 per-channel; int8, activations quantized at run time)
- int8-weights: `recipe.weight_only_wi8_afp32()` (int8 per-channel; fp32)
- int4-weights: `recipe.weight_only_wi4_afp32()` (int4 per-channel; fp32)
- int8: `recipe.static_wi8_ai8()`, calibrated (int8 per-channel; int8 with static activation ranges,
  taken as min/max over all calibration samples, see `_calibrate`)

ai-edge-quantizer has no named fp16 recipe; its FLOAT_CASTING algorithm (weight-only, float16) stores
fp16 weights with DEQUANTIZE ops, the same form TFLite's classic "float16 quantization" produced.

Static int8 makes the graph's inputs and outputs int8 by default. With `int8_io=False` (the default)
mobex adds NO_QUANTIZE for the virtual INPUT/OUTPUT ops so the model keeps float I/O with
QUANTIZE/DEQUANTIZE at its edges (a drop-in replacement for the fp32 model); with `int8_io=True`
the quantizer's int8 I/O is kept and its scale/zero_point are reported in the TensorSpecs.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mobex.artifacts import ExportedVariant, TensorSpec, path_size
from mobex.errors import ConversionError, DataError, UsageError
from mobex.validate.runners import TfliteIO, load_tflite_io

T = TypeVar("T")

TFLITE_VARIANTS = ("fp32", "fp16", "dynamic-int8", "int8-weights", "int4-weights", "int8")

# Below this ratio of the fp32 size a weight-quantized variant is doing its job; above it, most
# weights sat in ops the quantizer does not handle, and the report should say so.
_EXPECTED_RATIO = {"fp16": 0.6, "dynamic-int8": 0.4, "int8-weights": 0.4, "int4-weights": 0.3, "int8": 0.4}


def quantize_tflite(
    base: ExportedVariant,
    variant: str,
    out_path: Path,
    *,
    calibration: list[dict[str, np.ndarray]] | None = None,
    int8_io: bool = False,
) -> ExportedVariant:
    """Write the `variant` of the float model `base` to `out_path` (atomically) and describe it.

    `calibration` (needed by `int8` only) is a list of feeds keyed by the signature input names,
    each array with the input's shape. `int8_io=True` (only with `int8`) keeps int8 model I/O.
    """
    if variant not in TFLITE_VARIANTS:
        raise UsageError(
            f"unknown TFLite variant {variant!r}",
            hint=f"[android] variants can be: {', '.join(TFLITE_VARIANTS)}",
        )
    if base.target != "tflite" or base.quantization != "fp32":
        raise UsageError(
            f"quantize_tflite needs the fp32 TFLite model, got a {base.quantization} {base.target} variant"
        )
    if int8_io and variant != "int8":
        raise UsageError(f"int8 I/O needs the static 'int8' variant, not {variant!r}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    if variant == "fp32":
        if out_path.resolve() != Path(base.path).resolve():
            _write_atomic(out_path, Path(base.path).read_bytes())
        return ExportedVariant(
            target="tflite",
            platform="android",
            quantization="fp32",
            path=out_path,
            inputs=list(base.inputs),
            outputs=list(base.outputs),
            size_bytes=path_size(out_path),
            seconds=time.perf_counter() - start,
            notes=list(base.notes),
        )

    from ai_edge_quantizer import quantizer

    recipe, description = _recipe(variant, int8_io)
    feeds = _calibration_feeds(base, calibration) if variant == "int8" else None
    try:
        qt = quantizer.Quantizer(str(base.path), recipe)
        # The calibrator draws a tqdm bar on stderr that cannot be switched off; keep CI logs clean.
        with contextlib.redirect_stderr(io.StringIO()):
            qsvs = _calibrate(Path(base.path), recipe, feeds) if qt.need_calibration else None
            result = qt.quantize(qsvs, enable_progress_bar=False, enable_progress_report=False)
    except Exception as e:  # noqa: BLE001 - the quantizer raises ValueError/RuntimeError/KeyError
        raise ConversionError(
            f"ai-edge-quantizer failed to make the {variant!r} variant of {base.path}: {type(e).__name__}: {e}"
        ) from e
    written = _write_atomic(out_path, bytes(result.quantized_model), check=lambda p: _same_io(base, p, variant))
    seconds = time.perf_counter() - start
    size = path_size(out_path)
    ratio = size / base.size_bytes
    notes = [f"ai-edge-quantizer: {description}; {size} bytes, {ratio:.2f}x the fp32 model"]
    if feeds is not None:
        notes.append(f"calibrated on {len(feeds)} samples")
    if ratio > _EXPECTED_RATIO[variant]:
        notes.append(
            f"only {ratio:.2f}x the fp32 size: most weights are in ops this recipe does not quantize "
            "(the quantizer handles fully-connected, conv and embedding weights)"
        )
    return ExportedVariant(
        target="tflite",
        platform="android",
        quantization=variant,
        path=out_path,
        inputs=written.inputs,
        outputs=written.outputs,
        size_bytes=size,
        seconds=seconds,
        notes=notes,
    )


def _recipe(variant: str, int8_io: bool) -> tuple[list[dict[str, Any]], str]:
    """The ai-edge-quantizer recipe for a variant, and a one-line description for the report."""
    from ai_edge_quantizer import qtyping, recipe, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    ops = qtyping.TFLOperationName
    if variant == "dynamic-int8":
        return recipe.dynamic_wi8_afp32(), "dynamic_wi8_afp32 (int8 weights, dynamic int8 activations)"
    if variant == "int8-weights":
        return recipe.weight_only_wi8_afp32(), "weight_only_wi8_afp32 (int8 weights, float compute)"
    if variant == "int4-weights":
        return recipe.weight_only_wi4_afp32(), "weight_only_wi4_afp32 (int4 weights, float compute)"
    manager = recipe_manager.RecipeManager()
    if variant == "fp16":
        config = qtyping.OpQuantizationConfig(
            weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
            compute_precision=qtyping.ComputePrecision.FLOAT,
            explicit_dequantize=True,
        )
        for op in (
            ops.FULLY_CONNECTED,
            ops.CONV_2D,
            ops.DEPTHWISE_CONV_2D,
            ops.CONV_2D_TRANSPOSE,
            ops.EMBEDDING_LOOKUP,
        ):
            manager.add_quantization_config(".*", op, config, algorithm_key=AlgorithmName.FLOAT_CASTING)
        return manager.get_quantization_recipe(), "float_casting weight-only fp16 (fp16 weights, float compute)"
    # variant == "int8"
    manager.load_quantization_recipe(recipe.static_wi8_ai8())
    if int8_io:
        return manager.get_quantization_recipe(), "static_wi8_ai8 (int8 weights and activations, int8 I/O)"
    for op in (ops.INPUT, ops.OUTPUT):
        manager.add_quantization_config(".*", op, algorithm_key=AlgorithmName.NO_QUANTIZE)
    return manager.get_quantization_recipe(), "static_wi8_ai8 (int8 weights and activations, float I/O)"


def _calibrate(path: Path, recipe: list[dict[str, Any]], feeds: list[dict] | None) -> dict:
    """Activation ranges as the true min/max over all calibration samples.

    `Quantizer.calibrate` smooths per-sample ranges with a moving average (factor 0.95), so the
    range follows the last ~20 samples and clips larger activations: on the digits test CNN that
    put the worst sample's logit cosine at 0.95 (max error 10.6 on logits of norm ~28); with
    min/max it is 0.9996. The validator's gates judge the worst case, so mobex keeps the full range.
    """
    from ai_edge_quantizer import calibrator, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe)
    calib = calibrator.Calibrator(
        path.read_bytes(), num_threads=max(1, os.cpu_count() or 1), qsv_update_func=qsv_utils.min_max_update
    )
    calib.calibrate({load_tflite_io(path).signature: feeds or []}, manager)
    return calib.get_model_qsvs()


def _calibration_feeds(base: ExportedVariant, calibration: list[dict[str, np.ndarray]] | None) -> list[dict]:
    """Check calibration feeds against the model's inputs and cast them to its dtypes."""
    if not calibration:
        raise DataError(
            "the static 'int8' variant needs calibration data, and none was given",
            hint="set [data] calibration in the recipe (an .npz with one array per input), "
            "or drop 'int8' from [android] variants",
        )
    specs: dict[str, TensorSpec] = {s.name: s for s in base.inputs}
    feeds = []
    for i, feed in enumerate(calibration):
        if set(feed) != set(specs):
            raise DataError(
                f"calibration sample {i} has arrays {sorted(feed)}, the model takes {sorted(specs)}",
                hint="name the calibration arrays after the recipe's [[inputs]]",
            )
        cast = {}
        for name, spec in specs.items():
            x = np.asarray(feed[name])
            if tuple(x.shape) != spec.shape:
                raise DataError(
                    f"calibration sample {i}: array {name!r} has shape {list(x.shape)}, "
                    f"the model takes {list(spec.shape)}",
                    hint="store one sample per feed, batch dimension included",
                )
            cast[name] = np.ascontiguousarray(x, dtype=spec.dtype)
        feeds.append(cast)
    return feeds


def _same_io(base: ExportedVariant, path: Path, variant: str) -> TfliteIO:
    """A variant is a drop-in for the fp32 model: same names, order and shapes (only dtypes may change)."""
    written = load_tflite_io(path)
    before = [(s.name, s.shape) for s in base.inputs], [(s.name, s.shape) for s in base.outputs]
    after = [(s.name, s.shape) for s in written.inputs], [(s.name, s.shape) for s in written.outputs]
    if before != after:
        raise ConversionError(f"the {variant!r} variant changed the model's I/O from {before} to {after}")
    return written


def _write_atomic(path: Path, data: bytes, check: Callable[[Path], T] | None = None) -> T | None:
    """Write to a temp file in the same folder, `check` it, then rename: readers never see a partial or bad file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        result = check(Path(tmp)) if check is not None else None
        os.replace(tmp, path)
        return result
    finally:
        Path(tmp).unlink(missing_ok=True)
