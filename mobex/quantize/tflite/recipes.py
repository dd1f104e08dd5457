"""Quantized variants of a float .tflite: one ai-edge-quantizer recipe applied, or the static int8 pipeline.

The TFLite target (mobex.targets.tflite) registers each variant with the recipe it applies (fp16 as
FLOAT_CASTING weight-only, dynamic-int8, int8-weights, int4-weights); this module applies a recipe
(`apply_recipe`), makes the calibrated static int8 variant (`static_int8_variant`, the steps of
`static_int8.StaticInt8`: ranges from `calibration.py`, GPTQ weight levels (`gptq.py`), bias correction
(`bias_correction.py`) and, when the result misses the gate limits on the calibration data, a measured float
fallback of the most sensitive ops (`search.py`)), and checks what it wrote: a variant keeps the fp32
model's I/O names, order and shapes, and is written atomically. How the int8 variant was made travels in
the returned variant's `details`.

When calibration data is given, weight-quantized variants with float activations (dynamic-int8,
int8-weights) also get GPTQ weight levels and bias correction (`calibrate_weights`): the same format and
size, with levels chosen to minimise each layer's output error on the calibration data rather than each
weight's rounding error.

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
from mobex.converters.tflite_metadata import carry_model_contract
from mobex.errors import ConversionError, DataError, UsageError
from mobex.quantize.feeds import checked_feeds
from mobex.quantize.tflite.bias_correction import bias_correction_inputs, correct_biases
from mobex.quantize.tflite.calibration import calibrate
from mobex.quantize.tflite.gptq import RoundedOp, round_weights, weight_inputs
from mobex.quantize.tflite.graph import TfliteGraph
from mobex.quantize.tflite.static_int8 import HELD_OUT, Int8Options, Int8Result, StaticInt8
from mobex.runtime.litert import SIGNATURE_KEY, TfliteIO, load_tflite_io

T = TypeVar("T")

# Below this ratio of the fp32 size the static int8 variant is doing its job (see `apply_recipe`'s max_ratio).
STATIC_INT8_MAX_RATIO = 0.4


def copy_fp32(base: ExportedVariant, out_path: Path) -> ExportedVariant:
    """The fp32 variant: the converted model itself (copied when `out_path` is another file)."""
    _check_base(base)
    out_path = Path(out_path)
    start = time.perf_counter()
    if out_path.resolve() != Path(base.path).resolve():
        out_path.parent.mkdir(parents=True, exist_ok=True)
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


def apply_recipe(
    base: ExportedVariant,
    variant: str,
    out_path: Path,
    *,
    recipe: list[dict[str, Any]],
    description: str,
    max_ratio: float,
    calibration: list[dict[str, np.ndarray]] | None = None,
    weight_rounding: str | None = None,
) -> ExportedVariant:
    """Write `variant` of the fp32 model `base`, made by one ai-edge-quantizer `recipe`, to `out_path`.

    `description` is the report's one line for the recipe; `max_ratio` the size (x fp32) below which the
    recipe did its job (above it, most weights sat in ops the recipe does not quantize, and a note says so).
    With `weight_rounding` set ("gptq" or "nearest"), the variant's int8 weights may be calibrated:
    `calibration` (feeds keyed by the signature input names) chooses their levels by GPTQ and corrects the
    biases, unless the rounding is "nearest".
    """
    from ai_edge_quantizer import quantizer

    _check_base(base)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        qt = quantizer.Quantizer(str(base.path), recipe)
        with contextlib.redirect_stderr(io.StringIO()):
            result = qt.quantize(None, enable_progress_bar=False, enable_progress_report=False)
    except Exception as e:  # noqa: BLE001 - the quantizer raises ValueError/RuntimeError/KeyError
        raise ConversionError(
            f"ai-edge-quantizer failed to make the {variant!r} variant of {base.path}: {type(e).__name__}: {e}"
        ) from e
    data, notes = bytes(result.quantized_model), []
    if calibration and weight_rounding == "gptq":
        data, notes = _calibrated_weights(base, data, _calibration_feeds(base, calibration))
    elif calibration and weight_rounding == "nearest":
        notes = ['weights rounded to nearest by ai-edge-quantizer (weight_rounding = "nearest")']
    return _finish(base, variant, out_path, data, description, max_ratio, notes, None, start)


def static_int8_variant(
    base: ExportedVariant,
    out_path: Path,
    *,
    description: str,
    calibration: list[dict[str, np.ndarray]] | None,
    int8_io: bool = False,
    int8: Int8Options | None = None,
    training: list[dict[str, np.ndarray]] | None = None,
    held_out: list[dict[str, np.ndarray]] | None = None,
) -> ExportedVariant:
    """The static `int8` variant of the fp32 model `base`, calibrated on `calibration`, at `out_path`.

    `int8_io=True` keeps int8 model I/O. `int8` sets how it is made (calibration size, range estimation,
    bias correction, float fallback and the gate limits it must meet); the defaults correct biases and,
    having no limits, never fall back. The returned variant's `details` record calibration, fallback and
    search. `training` (feeds like `calibration`) is what `int8.finetune` trains on, when that is set; every
    10th of them is held out, and the fallback search's candidates must pass on those too. Without
    fine-tuning, `held_out` gives such samples directly.
    """
    _check_base(base)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    feeds = _calibration_feeds(base, calibration)
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
    details = json.loads(json.dumps(made.details(), sort_keys=True))  # canonical: the report shows it as is
    return _finish(
        base, "int8", out_path, made.model, description, STATIC_INT8_MAX_RATIO, _int8_notes(made), details, start
    )


def _finish(
    base: ExportedVariant,
    variant: str,
    out_path: Path,
    data: bytes,
    description: str,
    max_ratio: float,
    notes_extra: list[str],
    details: dict | None,
    start: float,
) -> ExportedVariant:
    """Write the quantized bytes atomically (checked to keep the fp32 model's I/O) and describe them."""
    data = carry_model_contract(Path(base.path).read_bytes(), data, SIGNATURE_KEY)  # the fp32 model's names, metadata
    written = _write_atomic(out_path, data, check=lambda p: _same_io(base, p, variant))
    seconds = time.perf_counter() - start
    size = path_size(out_path)
    ratio = size / base.size_bytes
    notes = [f"ai-edge-quantizer: {description}; {size} bytes, {ratio:.2f}x the fp32 model", *notes_extra]
    if ratio > max_ratio:
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
        details=details,
    )


def _check_base(base: ExportedVariant) -> None:
    if base.target != "tflite" or base.quantization != "fp32":
        raise UsageError(
            f"TFLite variants are made from the fp32 TFLite model, got a {base.quantization} {base.target} one"
        )


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
        # Measured p50s and search times are in quantization_details (cost, search_seconds), not in the
        # note: notes go into bundles, which must be the same bytes when the same model is built again.
        latency = " (p50: quantization_details.cost)" if made.p50_ms is not None and made.plain_p50_ms else ""
        verdict = "passes" if made.passed else "still misses"
        kept = sum(op.scope in made.int8_weight_ops for op in made.fallback)
        weights = f", {kept} of them with int8 weights" if kept else ""
        if made.islands:
            weights += f", {len(made.islands)} cheap op(s) between float ops"
        notes.append(
            f"float fallback of {len(made.fallback)} op(s) ({names}{weights}) {verdict} the int8 gate on "
            f"calibration data ({shown}); cost: size x{growth:.3f}{latency}; "
            f"{len(made.search.trials)} candidates measured"
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
            f"twin fidelity {trial.report.fidelity_db:.1f} dB): calibration {key} "
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
