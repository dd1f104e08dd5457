"""Quantized variants of a float .tflite with ai-edge-quantizer, one recipe per variant name.

Variant -> ai-edge-quantizer recipe (weights; compute):
- fp32: none, a copy of the converted model (fp32; fp32)
- fp16: FLOAT_CASTING weight-only, 16-bit float, on FC/conv/embedding ops (fp16 + DEQUANTIZE; fp32)
- dynamic-int8: `recipe.dynamic_wi8_afp32()` for CONV_2D/FULLY_CONNECTED (int8 per-channel; int8, activations
  quantized at run time) with DEPTHWISE_CONV_2D weight-only (int8 per-channel; fp32). Measured on
  EfficientNet-Lite0: hybrid depthwise kernels are both the least accurate (per-tensor run-time int8 of
  9-tap filters) and outside XNNPACK; with float depthwise compute the variant went from 82 % to 95 % top-1
  agreement and from 25 ms to 6 ms (x86, 1 thread), for 0.1 % more bytes. Depthwise is ~2 % of the MACs.
- int8-weights: `recipe.weight_only_wi8_afp32()` (int8 per-channel; fp32)
- int4-weights: `recipe.weight_only_wi4_afp32()` (int4 per-channel; fp32)
- int8: `recipe.static_wi8_ai8()`, calibrated (int8 per-channel; int8 with static activation ranges),
  made by `static_int8.StaticInt8`: ranges from `calibration.py` (true min/max over all samples, or
  percentile / MSE), GPTQ weight levels (`gptq.py`), bias correction of the int8 weights
  (`bias_correction.py`) and, when the result misses the gate limits on the calibration data, a measured
  float fallback of the most sensitive ops (`search.py`). What was done is written next to the
  model as `<model>.tflite.json`.

When calibration data is given, `dynamic-int8` and `int8-weights` also get GPTQ weight levels and bias
correction (`calibrate_weights`): the same format and size, with levels chosen to minimise
each layer's output error on the calibration data rather than each weight's rounding error.

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
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mobex.artifacts import ExportedVariant, path_size
from mobex.errors import ConversionError, DataError, UsageError
from mobex.quantize.feeds import checked_feeds
from mobex.quantize.tflite.bias_correction import bias_correction_inputs, correct_biases
from mobex.quantize.tflite.calibration import calibrate
from mobex.quantize.tflite.gptq import RoundedOp, round_weights, weight_inputs
from mobex.quantize.tflite.graph import TfliteGraph
from mobex.quantize.tflite.static_int8 import HELD_OUT, Int8Options, Int8Result, StaticInt8
from mobex.runtime.litert import TfliteIO, load_tflite_io

T = TypeVar("T")

TFLITE_VARIANTS = ("fp32", "fp16", "dynamic-int8", "int8-weights", "int4-weights", "int8")
# Float-activation variants whose int8 weights the calibration data (when given) rounds and bias-corrects.
_CALIBRATED_WEIGHT_VARIANTS = ("dynamic-int8", "int8-weights")

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
    int8: Int8Options | None = None,
    training: list[dict[str, np.ndarray]] | None = None,
    held_out: list[dict[str, np.ndarray]] | None = None,
) -> ExportedVariant:
    """Write the `variant` of the float model `base` to `out_path` (atomically) and describe it.

    `calibration` (needed by `int8`; used by `dynamic-int8` and `int8-weights` to choose the weights'
    int8 levels and correct the biases) is a list of feeds keyed by the signature input names, each
    array with the input's shape. `int8_io=True` (only with `int8`) keeps int8 model I/O.
    `int8` sets how the static variant is made (calibration size, range estimation, bias correction,
    float fallback and the gate limits it must meet); the defaults correct biases and, having no
    limits, never fall back. For `int8`, `<out_path>.json` records calibration, fallback and search.
    `training` (feeds like `calibration`) is what `int8.finetune` trains on, when that is set; every 10th
    of them is held out, and the fallback search's candidates must pass on those too. Without fine-tuning,
    `held_out` gives such samples directly.
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

    if variant == "int8":
        feeds = _calibration_feeds(base, calibration)
        _, description = _recipe(variant, int8_io)
        try:
            train = _training_feeds(base, training) if training else None
            held = _training_feeds(base, held_out, purpose="search check") if held_out and not train else None
            options = int8 or Int8Options()
            with StaticInt8(Path(base.path), feeds, options, int8_io=int8_io, training=train, held_out=held) as maker:
                made = maker.quantize()
        except (DataError, UsageError):
            raise
        except Exception as e:  # noqa: BLE001 - the quantizer raises ValueError/RuntimeError/KeyError
            raise ConversionError(
                f"ai-edge-quantizer failed to make the 'int8' variant of {base.path}: {type(e).__name__}: {e}"
            ) from e
        data, notes_extra = made.model, _int8_notes(made)
        sidecar = made.sidecar()
    else:
        from ai_edge_quantizer import quantizer

        recipe, description = _recipe(variant, int8_io)
        try:
            qt = quantizer.Quantizer(str(base.path), recipe)
            with contextlib.redirect_stderr(io.StringIO()):
                result = qt.quantize(None, enable_progress_bar=False, enable_progress_report=False)
        except Exception as e:  # noqa: BLE001 - the quantizer raises ValueError/RuntimeError/KeyError
            raise ConversionError(
                f"ai-edge-quantizer failed to make the {variant!r} variant of {base.path}: {type(e).__name__}: {e}"
            ) from e
        data, notes_extra, sidecar = bytes(result.quantized_model), [], None
        if calibration and variant in _CALIBRATED_WEIGHT_VARIANTS:
            if int8 is None or int8.weight_rounding == "gptq":
                data, notes_extra = _calibrated_weights(base, data, _calibration_feeds(base, calibration))
            else:
                notes_extra = ['weights rounded to nearest by ai-edge-quantizer (weight_rounding = "nearest")']
    written = _write_atomic(out_path, data, check=lambda p: _same_io(base, p, variant))
    if sidecar is not None:
        _write_atomic(sidecar_path(out_path), (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode())
    seconds = time.perf_counter() - start
    size = path_size(out_path)
    ratio = size / base.size_bytes
    notes = [f"ai-edge-quantizer: {description}; {size} bytes, {ratio:.2f}x the fp32 model", *notes_extra]
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
        manager = recipe_manager.RecipeManager()
        manager.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        manager.add_weight_only_config(regex=".*", operation_name=ops.DEPTHWISE_CONV_2D, num_bits=8)
        return manager.get_quantization_recipe(), (
            "dynamic_wi8_afp32 (int8 weights, dynamic int8 activations) with depthwise convolutions weight-only "
            "(int8 weights, float compute)"
        )
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


def _calibrated_weights(base: ExportedVariant, data: bytes, feeds: list[dict]) -> tuple[bytes, list[str]]:
    """GPTQ levels and bias correction for the int8 weights of a float-activation variant (gptq.py)."""
    model = bytearray(data)
    float_model = Path(base.path).read_bytes()
    signature = load_tflite_io(Path(base.path)).signature
    rounded, corrected = calibrate_weights(model, float_model, feeds, signature=signature)
    samples = min(len(feeds), 64)
    note = (
        f"int8 weight levels of {len(rounded)} weighted ops chosen by GPTQ and {corrected} biases corrected, "
        f"on {samples} calibration samples"
    )
    return bytes(model), [note]


def calibrate_weights(
    model: bytearray,
    float_model: bytes,
    feeds: list[dict[str, np.ndarray]],
    *,
    signature: str,
    samples: int = 64,
    num_threads: int = 1,
) -> tuple[list[RoundedOp], int]:
    """GPTQ levels and bias correction, in place, for a weight-only or dynamic-range int8 `model`.

    Those variants keep float activations, so the calibration data serves only the weights: one pass
    of the float model over (an evenly spread subset of) `feeds`. Returns the rounded ops and how many
    biases were corrected.
    """
    graph = TfliteGraph(float_model)
    picks = np.linspace(0, len(feeds) - 1, min(samples, len(feeds))).round().astype(int)
    stats = calibrate(
        float_model,
        None,
        [feeds[i] for i in picks],
        signature=signature,
        mean_of=bias_correction_inputs(graph),
        moments_of=weight_inputs(graph),
        moment_samples=samples,
        num_threads=num_threads,
    )
    quantized = TfliteGraph(model)  # parsed once for both rewrites: they change weight bytes, not the graph
    rounded = round_weights(model, graph, stats.moments, graph=quantized)
    corrected = correct_biases(model, graph, stats.means, graph=quantized)
    return rounded, len(corrected)


def sidecar_path(model_path: Path) -> Path:
    """Where the int8 details of a .tflite are written: `<model>.tflite.json`."""
    return Path(model_path).with_name(Path(model_path).name + ".json")


def _int8_notes(made: Int8Result) -> list[str]:
    """One line per thing the report reader should know about how the int8 model was made."""
    notes = [made.calibration.summary()]
    if made.equalization is not None:
        notes.append(made.equalization.summary())
    if made.rounded:
        ratio = float(np.median([r.error_ratio for r in made.rounded]))
        notes.append(
            f"int8 weight levels of {len(made.rounded)} weighted ops chosen by GPTQ on calibration data "
            f"(median layer output error x{ratio:.2f} of round-to-nearest)"
        )
    if made.corrections:
        notes.append(f"bias correction on {made.corrections} weighted ops")
    cal = made.metrics
    shown = ", ".join(f"{k} {cal[k]:.4g}" for k in ("top1_agreement", "cosine_min", "snr_db") if k in cal)
    held = ", ".join(
        f"{k} {cal[HELD_OUT + k]:.4g}" for k in ("top1_agreement", "cosine_min", "snr_db") if HELD_OUT + k in cal
    )
    if held:  # the search also judged its candidates on held-out training samples
        shown += f"; on held-out training samples: {held}"
    notes.extend(_finetune_notes(made))
    if made.search is None:
        if made.passed is not None:
            notes.append(f"on calibration data: {shown} ({'meets' if made.passed else 'misses'} the int8 gate)")
        return notes
    if made.fallback:
        names = "; ".join(op.label for op in made.fallback)
        growth = len(made.model) / max(1, made.plain_size)
        latency = ""
        if made.p50_ms is not None and made.plain_p50_ms:
            latency = f", p50 {made.plain_p50_ms:.3g} -> {made.p50_ms:.3g} ms"
        verdict = "passes" if made.passed else "still misses"
        kept = sum(op.scope in made.int8_weight_ops for op in made.fallback)
        weights = f", {kept} of them with int8 weights" if kept else ""
        if made.islands:
            weights += f", {len(made.islands)} cheap op(s) between float ops"
        notes.append(
            f"float fallback of {len(made.fallback)} op(s) ({names}{weights}) {verdict} the int8 gate on "
            f"calibration data ({shown}); cost: size x{growth:.3f}{latency}; "
            f"{len(made.search.trials)} candidates measured in {made.search.seconds:.0f} s"
        )
    else:
        notes.append(f"no float fallback within max_fallback_layers passes the int8 gate on calibration data ({shown})")
    if not made.passed:
        notes.append(
            "a larger [quantization] max_fallback_layers lets the search keep more ops in float (each costs "
            "latency); the gate decides whether this variant ships"
        )
    return notes


def _finetune_notes(made: Int8Result) -> list[str]:
    """What quantization-aware fine-tuning did: one line per fine-tuned candidate, measured in LiteRT."""
    if made.finetune_skipped:
        return [f"int8 fine-tuning not run: {made.finetune_skipped}"]
    notes = []
    for trial in made.finetune:
        key = "top1_agreement" if "top1_agreement" in trial.after else "snr_db"
        where = f"{len(trial.fallback)} op(s) in float" if trial.fallback else "full int8"
        notes.append(
            f"int8 fine-tuning ({where}; {trial.report.epochs} epochs on {trial.report.samples} training samples, "
            f"{trial.report.seconds:.0f} s, twin fidelity {trial.report.fidelity_db:.1f} dB): calibration {key} "
            f"{trial.before.get(key, float('nan')):.4g} -> {trial.after.get(key, float('nan')):.4g}, held-out "
            f"training samples {trial.held_out.get(key, float('nan')):.4g} "
            f"({'passes the int8 gate on both' if trial.passed else 'misses the int8 gate'})"
        )
    return notes


def _calibration_feeds(base: ExportedVariant, calibration: list[dict[str, np.ndarray]] | None) -> list[dict]:
    """Check calibration feeds against the model's inputs and cast them to its dtypes."""
    return checked_feeds(
        base.inputs, calibration, variant="static 'int8'", drop_hint="drop 'int8' from [android] variants"
    )


def _training_feeds(
    base: ExportedVariant, training: list[dict[str, np.ndarray]], purpose: str = "fine-tuning"
) -> list[dict]:
    """Check int8 fine-tuning's (or the search check's) training feeds like calibration feeds (names, shapes,
    NaN/inf)."""
    drop = "drop [quantization.finetune]" if purpose == "fine-tuning" else "set [quantization] search_held_out = false"
    return checked_feeds(base.inputs, training, variant=f"static 'int8' {purpose}", drop_hint=drop, role="training")


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
