"""Static int8 (int8 weights and activations) that keeps accuracy: calibrate once, build, check, fall back.

`StaticInt8` holds what every int8 candidate of one float model shares: the calibration statistics
(`calibration.py`), the float model's outputs on the calibration data (the reference the candidates
are measured against) and the gate limits. `build` makes one candidate with ai-edge-quantizer's
`static_wi8_ai8` recipe (per-channel int8 weights, per-tensor int8 activations), keeping a chosen
set of ops in float compute (recipe entries scoped to exactly those ops: `NO_QUANTIZE`, or weight-only
int8 for large weights int8 holds, see `gptq.int8_safe_weights`), then replaces the int8 weight
levels by GPTQ's (`gptq.py`) and applies bias correction. `quantize` checks the full-int8 model
against the gate limits on the calibration data and, when it fails and fallback is on, runs the search
of `search.py`.

Why each piece (measured on the real EfficientNet-Lite0, see docs/quantization.md): the default recipe
keeps 82 % top-1 agreement; bias correction lifts it to 88 %, equalization to 91 %; the fallback of the
layers that remain most sensitive (the stem and first inverted-residual block first) to 96 %. GPTQ
levels matter most where activations stay float (int8-weights: 85 % -> 97 %); here the int8 activations
dominate what is left.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobex.quantize.tflite.bias_correction import bias_correction_inputs, correct_biases
from mobex.quantize.tflite.bias_range import WidenedChannels, fit_int32_biases
from mobex.quantize.tflite.calibration import RANGE_METHODS, Calibration, calibrate
from mobex.quantize.tflite.equalize import Equalization, equalize
from mobex.quantize.tflite.gptq import GptqCache, RoundedOp, int8_safe_weights, round_weights, weight_inputs
from mobex.quantize.tflite.graph import (
    OpInfo,
    TfliteGraph,
    reconnect_int8_readers,
    recurrent_ops,
    with_float_islands,
)
from mobex.quantize.tflite.qat import FinetuneReport, FinetuneSettings, UnsupportedGraph, finetune_int8
from mobex.quantize.tflite.search import DAMAGE_FLOOR_DB, SearchResult, search_fallback

# Metrics the search can measure on unlabelled calibration data, and how they pass.
_SEARCH_METRICS = {
    "top1_agreement": "min",
    "cosine_min": "min",
    "snr_db": "min",
    "max_abs_error": "max",
    "mean_abs_error": "max",
    "range_error_max": "max",  # outputs of a few values (no cosine): error over the output's range
    "range_error_mean": "max",
}


@dataclass(frozen=True)
class Int8Options:
    """How to make the static `int8` variant (the recipe's [quantization] table, plus the gate limits)."""

    calibration_samples: int = 256
    fallback: bool = True
    max_fallback_layers: int = 8
    bias_correction: bool = True
    weight_rounding: str = "gptq"  # "gptq" (calibrated, gptq.py) or "nearest" (ai-edge-quantizer's own)
    rounding_samples: int = 64  # calibration samples whose input moments drive GPTQ
    range_estimation: str = "minmax"
    equalize: bool = True
    equalize_alpha: float = 1.0  # see equalize.py: measured best on EfficientNet-Lite0
    equalize_weights: bool = False
    equalize_relu6: bool = True  # also scale up the small channels of ReLU6 outputs (equalize.py)
    task: str = "other"
    class_output: int = 0  # classification: the output holding the class scores
    limits: dict[str, float] = field(default_factory=dict)  # gate metric -> limit the variant must meet
    sensitivity_samples: int = 32
    num_threads: int = 1
    finetune: FinetuneSettings | None = None  # quantization-aware fine-tuning (needs training feeds)
    finetune_fallback_trials: int = 2

    def __post_init__(self) -> None:
        if self.range_estimation not in RANGE_METHODS:
            raise ValueError(f"range_estimation must be one of {', '.join(RANGE_METHODS)}")
        if self.weight_rounding not in ("gptq", "nearest"):
            raise ValueError("weight_rounding must be 'gptq' or 'nearest'")


def search_limits(limits: dict[str, float]) -> dict[str, tuple[float, str]]:
    """The gate limits the search must meet on calibration data, with a safety margin.

    Calibration and validation samples differ, so a candidate that only just passes on calibration
    data may just fail on validation: the search asks for a little more (top-1 agreement +1 point,
    a tenth of the cosine slack, +1 dB SNR, 90 % of an error bound).
    """
    out = {}
    for metric, limit in limits.items():
        direction = _SEARCH_METRICS.get(metric)
        if direction is None:
            continue
        if metric == "top1_agreement":
            limit = min(1.0, limit + 0.01)
        elif metric == "cosine_min":
            limit = limit + (1.0 - limit) * 0.1
        elif metric == "snr_db":
            limit = limit + 1.0
        else:
            limit = limit * 0.9
        out[metric] = (limit, direction)
    return out


# Recurrent ops go int8 only when that model is at most this fraction of the float-recurrent one's p50: a smaller
# difference is timing noise (two timings of one model differ by several percent on a shared host).
RECURRENT_INT8_SPEEDUP = 0.9
HOLDOUT_EVERY = 10  # every 10th training sample is held out of fine-tuning and the search, to judge them on
HELD_OUT_MAX = 256  # at most this many of them (evenly spread): each passing search candidate runs on them
HELD_OUT = "held_out_"  # prefix of the held-out metrics in a search candidate's metrics


@dataclass
class FinetuneTrial:
    """One fine-tuned candidate: the ops it keeps in float, its calibration metrics before and after."""

    fallback: list[str]  # op labels kept in float
    before: dict[str, float]
    after: dict[str, float]
    passed: bool  # on the calibration data and on the held-out training samples
    report: FinetuneReport
    held_out: dict[str, float] = field(default_factory=dict)  # after, on held-out training samples

    def to_dict(self) -> dict:
        return {
            "fallback": self.fallback,
            "before": {k: round(v, 6) for k, v in self.before.items()},
            "after": {k: round(v, 6) for k, v in self.after.items()},
            "after_held_out": {k: round(v, 6) for k, v in self.held_out.items()},
            "passed": self.passed,
            **self.report.to_dict(),
        }


@dataclass
class RecurrentChoice:
    """Recurrent ops stay float (int8 weights where int8 holds them: hybrid) unless int8 measured better: passing
    the limits on the calibration data and faster. Both candidates are built and measured."""

    ops: list[OpInfo]
    kept_float: bool
    int8: dict[str, float]  # calibration metrics of the full-int8 model, with its p50_ms
    float: dict[str, float]  # the same with the recurrent ops in float
    int8_passed: bool

    def to_dict(self) -> dict:
        if self.kept_float:
            why = (
                "int8 failed the limits on calibration data"
                if not self.int8_passed
                else f"int8 was not faster than {RECURRENT_INT8_SPEEDUP:g}x the float-recurrent model's p50"
            )
        else:
            why = "int8 passed the limits on calibration data and was faster"
        return {
            "ops": [op.label for op in self.ops],
            "kept_float": self.kept_float,
            "why": why,
            "int8": {k: round(v, 6) for k, v in self.int8.items()},
            "float": {k: round(v, 6) for k, v in self.float.items()},
        }


@dataclass
class Int8Result:
    model: bytes
    metrics: dict[str, float]  # on the calibration data, against the float model
    passed: bool | None  # None when there were no limits to check
    calibration: Calibration
    corrections: int
    equalization: Equalization | None = None
    rounded: list[RoundedOp] = field(default_factory=list)  # weighted ops whose int8 levels GPTQ chose
    widened: list[WidenedChannels] = field(default_factory=list)  # channels whose weight scale the bias needed
    int8_weight_ops: frozenset[str] = frozenset()  # scopes that keep int8 weights when they fall back
    fallback: list[OpInfo] = field(default_factory=list)  # every op computing in float, in graph order
    islands: frozenset[str] = frozenset()  # scopes in `fallback` not chosen but between float ops (cheap ops)
    search: SearchResult | None = None
    plain_size: int = 0  # the full-int8 model (no fallback)
    plain_p50_ms: float | None = None
    p50_ms: float | None = None
    finetune: list[FinetuneTrial] = field(default_factory=list)  # quantization-aware fine-tuning runs
    finetune_skipped: str | None = None  # why fine-tuning was configured but not run
    recurrent: RecurrentChoice | None = None  # the measured default for recurrent ops, when there are any

    def details(self) -> dict:
        """How the model was made, for the report's `quantization_details` (it travels in the variant)."""
        out: dict[str, Any] = {
            "fallback_layers": [
                {
                    "index": op.index,
                    "op": op.kind,
                    "name": op.label,
                    "scope": op.scope,
                    "weights": "int8" if op.scope in self.int8_weight_ops else "float",
                    "reason": self._reason(op),
                }
                for op in self.fallback
            ],
            "calibration": {
                "samples": self.calibration.samples,
                "range_estimation": self.calibration.method,
                "narrowed_ranges": len(self.calibration.narrowed),
            },
            "bias_corrected_ops": self.corrections,
            "int32_bias_widened": [{"op": w.op, "channels": w.channels} for w in self.widened],
            "weight_rounding": {
                "gptq_ops": len(self.rounded),
                "median_error_ratio": round(float(np.median([r.error_ratio for r in self.rounded])), 4)
                if self.rounded
                else None,
            },
            "equalization": None if self.equalization is None else self.equalization.summary(),
            "calibration_metrics": {k: round(v, 6) for k, v in self.metrics.items()},
            "passed_on_calibration": self.passed,
            "search": [],
            "sensitivity": [],
        }
        if self.recurrent is not None:
            out["recurrent"] = self.recurrent.to_dict()
        if self.finetune or self.finetune_skipped:
            out["finetune"] = {"trials": [t.to_dict() for t in self.finetune], "skipped": self.finetune_skipped}
        if self.search is not None:
            out["search"] = [t.to_dict() for t in self.search.trials]
            out["sensitivity"] = [
                {"name": op.label, "op": op.kind, "snr_db_alone": round(snr, 3)} for op, snr in self.search.sensitivity
            ]
            out["search_seconds"] = round(self.search.seconds, 2)
            out["sensitivity_ran_on"] = self.search.sensitivity_ran_on
        if self.fallback:
            out["cost"] = {
                "size_bytes": {"int8": self.plain_size, "with_fallback": len(self.model)},
                "p50_ms": {"int8": self.plain_p50_ms, "with_fallback": self.p50_ms},
            }
        return out

    def _reason(self, op: OpInfo) -> str:
        if self.recurrent is not None and self.recurrent.kept_float and op in self.recurrent.ops:
            return "recurrent"
        return "between float ops" if op.scope in self.islands else "sensitive"


class StaticInt8:
    """Calibrated int8 candidates of one float .tflite (see module docstring)."""

    def __init__(
        self,
        float_path: Path,
        feeds: list[dict[str, np.ndarray]],
        options: Int8Options,
        *,
        int8_io: bool = False,
        training: list[dict[str, np.ndarray]] | None = None,
        held_out: list[dict[str, np.ndarray]] | None = None,
    ) -> None:
        from mobex.runtime.litert import TfliteRunner, load_tflite_io

        self.float_path = Path(float_path)
        # Fine-tuning trains on all training feeds but every HOLDOUT_EVERY-th, and is judged on those too; the
        # search judges its candidates on them as well. Without fine-tuning, `held_out` gives them directly.
        self.training = [f for i, f in enumerate(training or []) if i % HOLDOUT_EVERY]
        held = list(training)[::HOLDOUT_EVERY] if training else list(held_out or [])
        self.holdout = _subset(held, HELD_OUT_MAX)
        self._teacher: list[np.ndarray] | None = None
        self._holdout: list[np.ndarray] | None = None
        self.options = options
        self.int8_io = int8_io
        self.feeds = _subset(feeds, options.calibration_samples)
        self.float_bytes = self.float_path.read_bytes()
        self.signature = load_tflite_io(self.float_path).signature
        self.equalization: Equalization | None = None
        if options.equalize:
            self.float_bytes, self.equalization = equalize(
                self.float_bytes,
                self.feeds,
                signature=self.signature,
                alpha=options.equalize_alpha,
                use_weights=options.equalize_weights,
                clipped=options.equalize_relu6,
                num_threads=options.num_threads,
            )
        self.graph = TfliteGraph(self.float_bytes)
        self.calibration = calibrate(
            self.float_bytes,
            _recipe(frozenset(), None, int8_io),
            self.feeds,
            signature=self.signature,
            method=options.range_estimation,
            mean_of=bias_correction_inputs(self.graph) if options.bias_correction else (),
            moments_of=weight_inputs(self.graph) if options.weight_rounding == "gptq" else None,
            moment_samples=options.rounding_samples,
            num_threads=options.num_threads,
        )
        runner = TfliteRunner(self.float_path, num_threads=options.num_threads)
        self.output_names = [s.name for s in runner.outputs]
        self.reference = _run_all(runner, self.feeds)
        self.limits = search_limits(options.limits)
        self._tmp = Path(tempfile.mkdtemp(prefix="mobex-int8-"))
        self._corrections = 0
        self._rounded: list[RoundedOp] = []
        self._widened: list[WidenedChannels] = []
        self._gptq: GptqCache = {}  # GPTQ's levels per op, shared by every candidate build
        # Ops that keep int8 weights when they fall back to float compute (needs the GPTQ input moments).
        self.int8_weight_ops = frozenset(int8_safe_weights(self.graph, self.calibration.moments))
        # Ops every candidate keeps in float (recurrent ops, unless int8 measured better: `_recurrent_default`).
        self.always_float: frozenset[str] = frozenset()

    def close(self) -> None:
        import shutil

        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> StaticInt8:
        return self

    def __getstate__(self) -> dict:
        """For a copy in a Ray task (mobex.quantize.candidates): everything but this process's scratch folder."""
        state = dict(self.__dict__)
        state["_tmp"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        """A copy gets a scratch folder of its own (tasks on one machine must not share candidate files),
        removed when the copy is collected: nobody calls `close()` on it."""
        import shutil
        import weakref

        self.__dict__.update(state)
        self._tmp = Path(tempfile.mkdtemp(prefix="mobex-int8-copy-"))
        weakref.finalize(self, shutil.rmtree, self._tmp, True)

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- candidates --------------------------------------------------------------------------

    def build(self, float_ops: frozenset[str] = frozenset(), only: str | None = None) -> bytes:
        """One int8 candidate: `float_ops` (scopes) kept in float, or only the op `only` quantized.

        Cheap ops that would be int8 islands between float ops stay float too (`with_float_islands`), and so do
        the `always_float` ops."""
        if only is None:
            float_ops = with_float_islands(self.graph, float_ops | self.always_float, float_io=not self.int8_io)
        model = self.ai_edge_quantized(float_ops, only)
        graph = TfliteGraph(model)  # parsed once for the three rewrites (~0.3 s on EfficientNet-Lite0)
        plain = only is None and not float_ops  # the full-int8 model: its rewrites go into the details
        widened = fit_int32_biases(model, self.graph, graph)  # before GPTQ: it rounds at the widened scales
        if plain:
            self._widened = widened
        if self.calibration.moments:
            rounded = round_weights(model, self.graph, self.calibration.moments, graph, self._gptq)
            if plain:
                self._rounded = rounded
        if self.options.bias_correction:
            corrections = correct_biases(model, self.graph, self.calibration.means, graph)
            if plain:
                self._corrections = len(corrections)
        return bytes(model)

    def ai_edge_quantized(self, float_ops: frozenset[str] = frozenset(), only: str | None = None) -> bytearray:
        """ai-edge-quantizer's model with exactly `float_ops` in float (or only `only` quantized), before
        mobex's rewrites of its int32 biases, weight levels and biases (`build`)."""
        import contextlib
        import io

        from ai_edge_quantizer import quantizer

        recipe = _recipe(float_ops, only, self.int8_io and only is None, self.int8_weight_ops)
        qt = quantizer.Quantizer(self.float_bytes, recipe)
        with contextlib.redirect_stderr(io.StringIO()):
            result = qt.quantize(self.calibration.qsvs, enable_progress_bar=False, enable_progress_report=False)
        model = bytearray(result.quantized_model)
        reconnect_int8_readers(model)  # an output that also feeds an int8 op (a streaming state): see graph.py
        return model

    def evaluate(self, model: bytes, samples: int | None = None) -> dict[str, float]:
        """Parity metrics of `model` against the float model on the calibration feeds."""
        feeds = self.feeds if samples is None else self.feeds[:samples]
        return self._metrics(model, feeds, [r[: len(feeds) * _batch(feeds)] for r in self.reference])

    def _metrics(self, model: bytes, feeds: list[dict[str, np.ndarray]], reference: list[np.ndarray]) -> dict:
        from mobex.metrics.parity import parity_summary
        from mobex.runtime.litert import TfliteRunner

        path = self._tmp / "candidate.tflite"
        path.write_bytes(model)
        outputs = _run_all(TfliteRunner(path, num_threads=self.options.num_threads), feeds)
        summary = parity_summary(
            self.output_names,
            reference,
            outputs,
            task=self.options.task,
            labels=None,
            num_classes=None,
            class_output=self.options.class_output,
        )
        return {k: float(summary[k]) for k in _SEARCH_METRICS if isinstance(summary.get(k), (int, float))}

    def passes(self, metrics: dict[str, float]) -> bool:
        for metric, (limit, direction) in self.limits.items():
            value = metrics.get(metric)
            if value is None:
                continue
            if (direction == "min" and value < limit) or (direction == "max" and value > limit):
                return False
        return True

    def search_evaluate(self, model: bytes, samples: int | None = None) -> dict[str, float]:
        """`evaluate`, plus (for a candidate that passes on the calibration data, when training data was given)
        its metrics on the held-out training samples, as `held_out_<metric>`.

        Why: the search measures ~40 candidates on the same 256 calibration samples and keeps the smallest
        that passes, so the one it keeps tends to be one that passes there by luck. (Held-out samples come
        from the training data: `training` with fine-tuning, else `held_out`.) On EfficientNet-Lite0 its
        final set passed calibration at 98.05 % and then met 96.88 % on validation (gate: 97 %)."""
        metrics = self.evaluate(model, samples)
        if samples is None and self.holdout and self.passes(metrics):
            held_out = self._metrics(model, self.holdout, self.holdout_reference())
            metrics.update({f"{HELD_OUT}{k}": v for k, v in held_out.items()})
        return metrics

    def search_passes(self, metrics: dict[str, float]) -> bool:
        """Meets the limits on the calibration data and, when there are held-out training samples, on them too."""
        if not self.passes(metrics):
            return False
        held_out = {k[len(HELD_OUT) :]: v for k, v in metrics.items() if k.startswith(HELD_OUT)}
        return not self.holdout or (bool(held_out) and self.passes(held_out))

    def p50_ms(self, model: bytes, runs: int = 15) -> float:
        """Median single-thread latency of `model` on the first feed (for the cost of a fallback)."""
        from mobex.runtime.litert import TfliteRunner

        path = self._tmp / "timed.tflite"
        path.write_bytes(model)
        runner = TfliteRunner(path, num_threads=1)
        feed = self.feeds[0]
        for _ in range(3):
            runner.run(feed)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            runner.run(feed)
            times.append((time.perf_counter() - start) * 1000)
        return round(float(np.median(times)), 4)

    def _with_islands(self, chosen: list[OpInfo]) -> tuple[list[OpInfo], frozenset[str]]:
        """The ops a build with `chosen` in float really computes in float, and which of them were added."""
        scopes = frozenset(op.scope for op in chosen) | self.always_float
        islands = self._islands(scopes)
        return [op for op in self.graph.ops if op.scope in scopes | islands], islands

    def _islands(self, scopes: frozenset[str]) -> frozenset[str]:
        """The ops a build keeping `scopes` in float keeps in float too (cheap ops between float ops)."""
        scopes = scopes | self.always_float
        return with_float_islands(self.graph, scopes, float_io=not self.int8_io) - scopes

    def _recurrent_default(self) -> RecurrentChoice | None:
        """Measure the full-int8 model against one with the recurrent ops in float; keep them float unless int8
        passes the limits and runs faster. Sets `always_float`. None when the model has no recurrent op."""
        ops = recurrent_ops(self.graph)
        if not ops:
            return None
        scopes = frozenset(op.scope for op in ops)
        int8_model, float_model = self.build(), self.build(scopes)
        int8_metrics, float_metrics = self.search_evaluate(int8_model), self.search_evaluate(float_model)
        int8_metrics["p50_ms"], float_metrics["p50_ms"] = self.p50_ms(int8_model, 50), self.p50_ms(float_model, 50)
        int8_metrics["size_bytes"], float_metrics["size_bytes"] = len(int8_model), len(float_model)
        passed = self.search_passes(int8_metrics)
        better = passed and int8_metrics["p50_ms"] < RECURRENT_INT8_SPEEDUP * float_metrics["p50_ms"]
        if not better:
            self.always_float = scopes
        return RecurrentChoice(ops, not better, int8_metrics, float_metrics, passed)

    def _island_labels(self, scopes: frozenset[str]) -> list[str]:
        """`_islands` as op labels in graph order (for the search's trials)."""
        islands = self._islands(scopes)
        return [op.label for op in self.graph.ops if op.scope in islands]

    # -- quantization-aware fine-tuning (qat.py) ---------------------------------------

    def _finetuned(self, model: bytes, fallback: list[OpInfo]) -> tuple[FinetuneTrial, bytes]:
        """Fine-tune one candidate on the training feeds (all but every HOLDOUT_EVERY-th); measure it before and
        after with LiteRT. It passes only when it meets the gate on the calibration data *and* on the held-out
        training samples: 256 calibration samples alone are too few to trust a candidate trained for them."""
        before = self.evaluate(model)
        tuned, report = finetune_int8(
            model, self.signature_inputs, self.training, self.teacher(), self.options.finetune, self.run_model
        )
        after = self.evaluate(tuned)
        held_out = self._metrics(tuned, self.holdout, self.holdout_reference())
        passed = self.passes(after) and self.passes(held_out)
        labels = [op.label for op in self._with_islands(fallback)[0]]
        trial = FinetuneTrial(labels, before, after, passed, report, held_out)
        return trial, tuned

    def _finetune_smaller_fallbacks(self, result: Int8Result, search: SearchResult) -> None:
        """Fine-tune the 2, 4, ... most sensitive ops' fallback sets that are smaller than the plain search's;
        the first that passes replaces it (fewer float ops: faster)."""
        ranked = [op for op, snr in search.sensitivity if snr < DAMAGE_FLOOR_DB]
        sizes = [k for k in (2, 4, 8, 16, 32) if k < len(search.fallback)][: self.options.finetune_fallback_trials]
        for k in sizes:
            chosen = sorted(ranked[:k], key=lambda o: o.index)
            trial, tuned = self._finetuned(self.build(frozenset(op.scope for op in chosen)), chosen)
            result.finetune.append(trial)
            if trial.passed:
                result.model, result.metrics, result.passed, result.fallback = tuned, trial.after, True, chosen
                return

    @property
    def signature_inputs(self) -> list[str]:
        """The signature's input names in the order of the graph's input tensors (the twin's call order)."""
        from mobex.runtime.litert import load_tflite_io

        io = load_tflite_io(self.float_path)
        by_tensor = dict(zip(io.input_indices, [s.name for s in io.inputs], strict=True))
        return [by_tensor[t] for t in self.graph.input_tensors]

    def teacher(self) -> list[np.ndarray]:
        """The float model's outputs on the training feeds (graph output order), computed once."""
        if self._teacher is None:
            from mobex.runtime.litert import TfliteRunner, load_tflite_io

            outs = _run_all(TfliteRunner(self.float_path, num_threads=self.options.num_threads), self.training)
            self._teacher = _in_graph_order(outs, load_tflite_io(self.float_path), self.graph)
        return self._teacher

    def holdout_reference(self) -> list[np.ndarray]:
        """The float model's outputs on the held-out training feeds (signature order, like `reference`)."""
        if self._holdout is None:
            from mobex.runtime.litert import TfliteRunner

            runner = TfliteRunner(self.float_path, num_threads=self.options.num_threads)
            self._holdout = _run_all(runner, self.holdout)
        return self._holdout

    def run_model(self, model: bytes, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """A model's outputs on `feeds` in LiteRT, in graph output order (to compare with the twin)."""
        from mobex.runtime.litert import TfliteRunner, load_tflite_io

        path = self._tmp / "twin-check.tflite"
        path.write_bytes(model)
        outs = _run_all(TfliteRunner(path, num_threads=self.options.num_threads), feeds)
        return _in_graph_order(outs, load_tflite_io(path), TfliteGraph(model))

    # -- the whole flow ----------------------------------------------------------------------

    def quantize(self) -> Int8Result:
        """Full int8 (recurrent ops in float unless int8 measured better); when it fails the limits on calibration
        data and fallback is on, search a fallback set."""
        recurrent = self._recurrent_default()
        model = self.build()
        metrics = self.search_evaluate(model)
        passed = self.search_passes(metrics) if self.limits else None
        result = Int8Result(
            model,
            metrics,
            passed,
            self.calibration,
            self._corrections,
            self.equalization,
            rounded=list(self._rounded),
            widened=list(self._widened),
            int8_weight_ops=self.int8_weight_ops,
            plain_size=len(model),
            recurrent=recurrent,
        )
        if recurrent is not None and recurrent.kept_float:
            result.fallback, result.islands = self._with_islands([])
            result.plain_size, result.plain_p50_ms = int(recurrent.int8["size_bytes"]), recurrent.int8["p50_ms"]
            result.p50_ms = recurrent.float["p50_ms"]
        tune = self.options.finetune is not None and passed is False
        if tune and not self.training:
            result.finetune_skipped = "no training data given (it needs at least 2 samples: every 10th is held out)"
            tune = False
        full_int8: tuple[FinetuneTrial, bytes] | None = None
        if tune:
            try:
                full_int8 = self._finetuned(model, [])
            except UnsupportedGraph as exc:
                result.finetune_skipped = f"the int8 twin cannot run this graph: {exc}"
                tune = False
            else:
                trial, tuned = full_int8
                result.finetune.append(trial)
                if _better(trial.after, metrics):
                    result.model, result.metrics, result.passed = tuned, trial.after, trial.passed
                if trial.passed:
                    return result
        if result.passed is False and self.options.fallback and self.options.max_fallback_layers > 0:
            ops = [op for op in self.graph.quantizable_ops() if op.scope not in self.always_float]
            search = search_fallback(
                ops,
                self.build,
                self.search_evaluate,
                self.search_passes,
                max_layers=self.options.max_fallback_layers,
                sensitivity_samples=min(self.options.sensitivity_samples, len(self.feeds)),
                islands=self._island_labels,
            )
            result.search = search
            result.fallback = search.fallback
            result.model, result.metrics, result.passed = search.model, search.metrics, search.passed
            if tune and search.passed and len(search.fallback) > 1:
                self._finetune_smaller_fallbacks(result, search)
            elif tune and not search.passed and search.fallback:  # the closest candidate, fine-tuned
                trial, tuned = self._finetuned(search.model, search.fallback)
                result.finetune.append(trial)
                if _better(trial.after, search.metrics):
                    result.model, result.metrics, result.passed = tuned, trial.after, trial.passed
            if not result.passed and full_int8 is not None and _better(full_int8[0].after, result.metrics):
                # nothing passed: the fine-tuned full-int8 model is the closest, and the fastest
                result.model, result.metrics, result.fallback = full_int8[1], full_int8[0].after, []
            if result.fallback:
                result.fallback, result.islands = self._with_islands(result.fallback)
                result.plain_p50_ms = recurrent.int8["p50_ms"] if recurrent else self.p50_ms(model)
                result.p50_ms = self.p50_ms(result.model)
        return result


def _recipe(
    float_ops: frozenset[str], only: str | None, int8_io: bool, int8_weight_ops: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """ai-edge-quantizer recipe: static_wi8_ai8, optionally scoped to one op, with some ops kept in float
    (those in `int8_weight_ops` with int8 weights, dequantized once at load)."""
    import re

    from ai_edge_quantizer import qtyping, recipe, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    manager = recipe_manager.RecipeManager()
    static = recipe.static_wi8_ai8()
    if only is None:
        manager.load_quantization_recipe(static)
    else:
        regex = "^" + re.escape(only) + "$"
        for entry in static:
            manager.add_quantization_config(
                regex,
                entry["operation"],
                qtyping.OpQuantizationConfig.from_dict(entry["op_config"]),
                entry["algorithm_key"],
            )
    if not int8_io:
        for op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
            manager.add_quantization_config(".*", op, algorithm_key=AlgorithmName.NO_QUANTIZE)
    ops = qtyping.TFLOperationName
    for scope in sorted(float_ops):
        regex = "^" + re.escape(scope) + "$"
        manager.add_quantization_config(regex, ops.ALL_SUPPORTED, algorithm_key=AlgorithmName.NO_QUANTIZE)
        if scope in int8_weight_ops:
            # Float compute with int8 weights: the fallback is about activations, and float32 weights would
            # cost 4x their bytes (EfficientNet-Lite0's classifier alone: 5 MB). Only for weights int8 holds.
            for kind in (ops.FULLY_CONNECTED, ops.CONV_2D, ops.DEPTHWISE_CONV_2D):
                manager.add_weight_only_config(regex, kind, num_bits=8)
    return manager.get_quantization_recipe()


def _in_graph_order(outputs: list[np.ndarray], io: Any, graph: TfliteGraph) -> list[np.ndarray]:
    """Runner outputs (signature order) rearranged into the graph's output-tensor order (the twin's)."""
    position = {t: i for i, t in enumerate(io.output_indices)}
    return [outputs[position[t]] for t in graph.output_tensors]


def _better(after: dict[str, float], before: dict[str, float]) -> bool:
    """Fine-tuning is kept when it raises top-1 agreement (classifiers), or keeps it and raises output SNR."""

    def rank(m: dict[str, float]) -> tuple[float, float]:
        return m.get("top1_agreement", 0.0), m.get("snr_db", float("-inf"))

    return rank(after) > rank(before)


def _subset(feeds: list[dict[str, np.ndarray]], limit: int) -> list[dict[str, np.ndarray]]:
    """At most `limit` feeds, evenly spread over the data (deterministic)."""
    if len(feeds) <= limit:
        return list(feeds)
    picks = np.linspace(0, len(feeds) - 1, limit).round().astype(int)
    return [feeds[i] for i in picks]


def _batch(feeds: list[dict[str, np.ndarray]]) -> int:
    first = next(iter(feeds[0].values()))
    return int(first.shape[0]) if first.ndim else 1


def _run_all(runner: Any, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    per_output: list[list[np.ndarray]] = []
    for feed in feeds:
        outs = runner.run(feed)
        if not per_output:
            per_output = [[] for _ in outs]
        for i, o in enumerate(outs):
            per_output[i].append(np.asarray(o, dtype=np.float32) if np.asarray(o).dtype.kind == "f" else np.asarray(o))
    return [np.concatenate(chunks, axis=0) for chunks in per_output]
