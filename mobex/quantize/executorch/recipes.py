"""The ExecuTorch `int8` variant: the chosen PT2E candidate lowered with XNNPACK to a `.pte`, measured in the runtime.

`quantize_executorch` runs `ExecutorchInt8` (static_int8.py) on the torch model, lowers the candidate it
keeps (the full-int8 one, or the smallest float fallback that passed), writes the `.pte` atomically and
runs it in ExecuTorch's runtime on the calibration data: those runtime numbers (not the torch model's the
search decided on) say whether the variant met the gate limits on calibration data. `Int8Details` is
what was done, for the report; the notes of the ExportedVariant say the same in one line each.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobex.artifacts import ExportedVariant, Platform, TensorSpec
from mobex.converters.executorch import XnnpackDelegate, check_example, lower_program, write_variant
from mobex.converters.tflite import _output_names
from mobex.errors import ConversionError, DataError, UsageError
from mobex.quantize.executorch.static_int8 import EtInt8Options, EtInt8Result, ExecutorchInt8
from mobex.quantize.feeds import checked_feeds
from mobex.runtime.executorch import require_executorch


@dataclass(frozen=True)
class Int8Details:
    """What the int8 variant is and how it was chosen (all metrics on the calibration data, vs the float model)."""

    range_estimation: str
    calibration_samples: int
    equalization: str | None
    corrected_biases: int
    fallback: list[str]  # labels of the ops kept in float, in graph order
    metrics_torch: dict[str, float]  # the PT2E model in torch, which the search decided on
    metrics_runtime: dict[str, float]  # the .pte in ExecuTorch's runtime
    passed: bool | None  # the runtime metrics against the limits (with the search's margins); None: no limits
    plain_metrics_torch: dict[str, float] = field(default_factory=dict)  # full int8, before any fallback
    search_trials: int = 0
    search_seconds: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        def rounded(m: dict[str, float]) -> dict[str, float]:
            return {k: round(v, 6) for k, v in m.items()}

        return {
            "range_estimation": self.range_estimation,
            "calibration_samples": self.calibration_samples,
            "equalization": self.equalization,
            "bias_corrected_ops": self.corrected_biases,
            "fallback_layers": list(self.fallback),
            "calibration_metrics": rounded(self.metrics_runtime),
            "calibration_metrics_torch": rounded(self.metrics_torch),
            "full_int8_metrics_torch": rounded(self.plain_metrics_torch),
            "passed_on_calibration": self.passed,
            "search_trials": self.search_trials,
            "search_seconds": round(self.search_seconds, 2),
            "seconds": round(self.seconds, 2),
        }


def quantize_executorch(
    model: Any,
    example_inputs: dict[str, Any],
    out_path: Path,
    *,
    calibration: list[dict[str, np.ndarray]] | None,
    output_names: list[str] | None = None,
    options: EtInt8Options | None = None,
    held_out: list[dict[str, np.ndarray]] | None = None,
    platform: Platform = "android",
) -> tuple[ExportedVariant, Int8Details]:
    """Write the int8 `.pte` of the float torch `model` to `out_path` (atomically) and describe it.

    `calibration` (required) and `held_out` (optional: passing fallback candidates must pass on these too)
    are feeds keyed by the input names, each array with the example input's shape. `options` sets range
    estimation, equalization, fallback and the gate limits; without limits there is no fallback."""
    require_executorch("the ExecuTorch int8 variant")
    start = time.perf_counter()
    options = options or EtInt8Options()
    names, flat = check_example(model, example_inputs)
    out_names = _output_names(output_names, len(flat))
    specs = [TensorSpec(n, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for n, v in example_inputs.items()]
    hint = "or drop executorch:int8 from the variants"
    feeds = checked_feeds(specs, calibration, variant="executorch:int8", drop_hint=hint)
    held = None
    if held_out:
        held = checked_feeds(specs, held_out, variant="executorch:int8", drop_hint=hint, role="held-out")
    try:
        maker = ExecutorchInt8(model, example_inputs, feeds, options, held_out=held)
        result = maker.quantize()
        exported = _static_export(maker.converted(result.candidate.skip, result.candidate.only), example_inputs)
    except (DataError, UsageError, ConversionError):
        raise
    except Exception as e:  # noqa: BLE001 - PT2E raises AssertionError/RuntimeError/KeyError on odd graphs
        raise ConversionError(f"PT2E int8 quantization failed: {type(e).__name__}: {e}") from e
    lowered = lower_program(exported, names, out_names, XnnpackDelegate(platform=platform))
    variant = write_variant(lowered, out_path, example_inputs, flat, out_names, quantization="int8", start=start)
    details = _details(maker, result, variant.path, time.perf_counter() - start)
    variant.notes.extend(_notes(details))
    variant.seconds = details.seconds
    return variant, details


def _static_export(module: Any, example_inputs: dict[str, Any]) -> Any:
    """The candidate (traced with a dynamic batch) exported again with the recipe's static shapes."""
    import torch

    with torch.no_grad():
        return torch.export.export(module, tuple(example_inputs.values()), strict=False)


def _details(maker: ExecutorchInt8, result: EtInt8Result, path: Path, seconds: float) -> Int8Details:
    from mobex.runtime.executorch import ExecutorchRunner

    runner = ExecutorchRunner(path)
    outs = [runner.run(feed) for feed in maker.feeds]
    runtime = maker.metrics([np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))], maker.reference)
    search = result.search
    return Int8Details(
        range_estimation=maker.options.range_estimation,
        calibration_samples=len(maker.feeds),
        equalization=result.equalization,
        corrected_biases=result.corrected_biases,
        fallback=[op.label for op in result.fallback],
        metrics_torch=result.metrics,
        metrics_runtime=runtime,
        passed=maker.passes(runtime) if maker.limits else None,
        plain_metrics_torch=result.plain_metrics,
        search_trials=len(search.trials) if search else 0,
        search_seconds=search.seconds if search else 0.0,
        seconds=seconds,
    )


def _notes(d: Int8Details) -> list[str]:
    def short(m: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.4g}" for k, v in m.items() if k in ("top1_agreement", "snr_db", "cosine_min"))

    notes = [
        f"PT2E int8 (XNNPACKQuantizer, per-channel symmetric weights, static per-tensor activations), "
        f"{d.range_estimation} ranges over {d.calibration_samples} calibration samples",
    ]
    if d.equalization:
        notes.append(d.equalization)
    if d.corrected_biases:
        notes.append(f"bias correction of {d.corrected_biases} int8-weight op(s)")
    if d.fallback:
        notes.append(f"kept in float ({len(d.fallback)}): {', '.join(d.fallback)}")
    notes.append(f"on calibration data: runtime {short(d.metrics_runtime)}; torch {short(d.metrics_torch)}")
    return notes
