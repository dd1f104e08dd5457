"""Static int8 for ExecuTorch (PT2E + XNNPACKQuantizer) that keeps accuracy: calibrate once, build, check, fall back.

`ExecutorchInt8` holds what every int8 candidate of one float model shares: the exported float graph
(graph.py: batch dimension dynamic, BatchNorm folded, optionally equalized by equalize.py), the float
model's outputs on the calibration data (the reference candidates are measured against), one calibrated
set of observers, and the gate limits. `build(skip, only)` makes one candidate: prepare_pt2e with
mobex's XNNPACK quantizer (quantizer.py: per-channel symmetric int8 weights, per-tensor int8 activations,
ReLU6 fused) leaving the `skip` ops in float; the observers are copies of the calibrated ones (an
observer watches one tensor, named by the node that produces it, and the float values a tensor takes do
not depend on which ops are quantized), so no candidate runs the calibration data again; convert_pt2e.

A candidate is the PT2E model in torch: int8 quantize/dequantize around float ops, which is what the
XNNPACK delegate computes with int8 kernels (checked: the same top-1 on every sample of digits_cnn; on
EfficientNet-Lite0 see docs/executorch.md). The search measures candidates that way because lowering one
to a `.pte` takes 1.5-3 minutes on EfficientNet-Lite0; the chosen one is lowered and measured again in
ExecuTorch's runtime (`quantize_executorch`), and those are the numbers that count.

`quantize` checks the full-int8 candidate against the gate limits on the calibration data and, when it
fails and fallback is on, runs the TFLite pipeline's search (`mobex.quantize.tflite.search.search_fallback`:
sensitivity of each op alone, then the smallest prefix of the most damaging ops that passes, then drop
what is not needed), with its margins (`search_limits`) and its held-out check of passing candidates.
"""

from __future__ import annotations

import copy
import operator
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobex.quantize.executorch.graph import EVAL_BATCH, QuantizableOp, export_batched, fold_batch_norm, op_of_node
from mobex.quantize.executorch.observers import OBSERVED_RANGES
from mobex.quantize.executorch.quantizer import make_quantizer
from mobex.quantize.executorch.simulate import simulate
from mobex.quantize.tflite.search import SearchResult, search_fallback
from mobex.quantize.tflite.static_int8 import _SEARCH_METRICS, HELD_OUT, HELD_OUT_MAX, _subset, search_limits


@dataclass(frozen=True)
class EtInt8Options:
    """How to make the ExecuTorch `int8` variant. `limits`: gate metric -> limit the variant must meet
    (the int8 gates of mobex.validate.gates, given by the caller); none: no check, no fallback."""

    calibration_samples: int = 256
    range_estimation: str = "minmax"  # "minmax" | "percentile" | "mse" | "histogram" (ExecuTorch's default)
    fuse_relu6: bool = True  # quantizer.py; False: XNNPACKQuantizer's own annotation
    equalize: bool = True  # cross-layer equalization of the float graph (equalize.py)
    bias_correction: bool = True  # biases corrected for the int8 weights' rounding (bias_correction.py)
    fallback: bool = True
    max_fallback_layers: int = 8
    sensitivity_samples: int = 32
    task: str = "other"
    class_output: int = 0  # classification: the output holding the class scores
    limits: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.range_estimation not in OBSERVED_RANGES:
            raise ValueError(f"range_estimation must be one of {', '.join(OBSERVED_RANGES)}")

    @classmethod
    def like(cls, tflite: Any, **overrides: Any) -> EtInt8Options:
        """The settings TFLite's `Int8Options` (e.g. `Int8Options.from_recipe(recipe)`) shares with these
        (calibration samples, range estimation, equalization, fallback and its budget, task, limits)."""
        from dataclasses import fields

        shared = {f.name: getattr(tflite, f.name) for f in fields(cls) if hasattr(tflite, f.name)}
        return cls(**{**shared, **overrides})


@dataclass(frozen=True)
class Candidate:
    """One int8 candidate: which ops it keeps in float, its fast torch twin (simulate.py) and the bytes its
    weights take in the converted model. `len()` is those bytes (what `search_fallback` records as a trial's
    size). `ExecutorchInt8.converted(candidate)` rebuilds the converted model itself, to lower it."""

    skip: frozenset[str]
    only: str | None
    twin: Any
    weight_bytes: int

    def __len__(self) -> int:
        return self.weight_bytes


@dataclass
class EtInt8Result:
    candidate: Candidate
    metrics: dict[str, float]  # on the calibration data, against the float model (PT2E model in torch)
    passed: bool | None  # None when there were no limits to check
    fallback: list[QuantizableOp] = field(default_factory=list)  # ops kept in float, in graph order
    search: SearchResult | None = None
    equalization: str | None = None
    corrected_biases: int = 0  # ops whose bias was corrected for their int8 weights
    plain_metrics: dict[str, float] = field(default_factory=dict)  # the full-int8 candidate
    seconds: float = 0.0


class ExecutorchInt8:
    """Calibrated int8 candidates of one float torch model (see module docstring)."""

    def __init__(
        self,
        model: Any,
        example_inputs: dict[str, Any],
        feeds: list[dict[str, np.ndarray]],
        options: EtInt8Options,
        *,
        held_out: list[dict[str, np.ndarray]] | None = None,
    ) -> None:
        self.options = options
        self.input_names = list(example_inputs)
        self.feeds = _subset(feeds, options.calibration_samples)
        self.holdout = _subset(list(held_out or []), HELD_OUT_MAX)
        graph = export_batched(model, example_inputs)
        self.batched = graph.batched
        fold_batch_norm(graph.module)
        self.equalization: str | None = None
        if options.equalize:
            from mobex.quantize.executorch.equalize import equalize

            report = equalize(graph.module, self._batches(self.feeds))
            nothing = "cross-layer equalization: no stream to equalize"
            self.equalization = report.summary() if report.streams else nothing
        self.float_module = graph.module
        self.ops = self._ops()
        self.op_of_node = op_of_node(self.ops)
        self.reference = self._run(graph.module, self.feeds)
        self._holdout_reference: list[np.ndarray] | None = None
        self.output_names = [f"output_{i}" for i in range(len(self.reference))]
        self.limits = search_limits(options.limits)
        self._corrections: dict[str, tuple[str, Any]] = {}
        self._observers = self._calibrate()
        if options.bias_correction:
            self._corrections = self._bias_corrections()

    def _bias_corrections(self) -> dict[str, tuple[str, Any]]:
        from mobex.quantize.executorch.bias_correction import corrected_biases, mean_inputs, weighted_nodes

        nodes = weighted_nodes(self.float_module)
        means = mean_inputs(self.float_module, nodes, self._batches(self.feeds))
        return corrected_biases(self.float_module, nodes, means, self._observers)

    def _ops(self) -> list[QuantizableOp]:
        from mobex.quantize.executorch.graph import quantizable_ops

        return quantizable_ops(self.float_module)

    # -- candidates --------------------------------------------------------------------------

    def _prepared(self, skip: frozenset[str] = frozenset(), only: str | None = None) -> Any:
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

        quantizer = make_quantizer(
            self.options.range_estimation,
            unit_of=self.op_of_node,
            skip=skip,
            only=only,
            fuse_relu6=self.options.fuse_relu6,
        )
        model = copy.deepcopy(self.float_module)
        for scope, (target, bias) in self._corrections.items():
            if scope not in skip and (only is None or only == scope):  # only ops with int8 weights
                operator.attrgetter(target)(model).data.copy_(bias)
        return prepare_pt2e(model, quantizer)

    def _calibrate(self) -> dict[str, Any]:
        """Observers of the full-int8 model after the calibration data: observed tensor name -> observer."""
        import torch

        prepared = self._prepared()
        with torch.no_grad():
            for batch in self._batches(self.feeds):
                prepared(*batch)
        observers = _observers(prepared)
        for observer in observers.values():
            if hasattr(observer, "narrowed_range"):
                observer.narrowed_range()  # once, here, not in every candidate's copy
        return observers

    def build(self, skip: frozenset[str] = frozenset(), only: str | None = None) -> Candidate:
        """One candidate: `skip` ops kept in float, or only the op `only` quantized (module docstring)."""
        module = self.converted(skip, only)
        return Candidate(skip, only, simulate(module), _weight_bytes(module))

    def converted(self, skip: frozenset[str] = frozenset(), only: str | None = None) -> Any:
        """The converted PT2E model of a candidate (what `quantize_executorch` lowers)."""
        import torch
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        prepared = self._prepared(skip, only)
        missing = []
        for node in prepared.graph.nodes:
            key = _observed_name(prepared, node)
            if key is None:
                continue
            if key in self._observers:
                setattr(prepared, node.target, copy.deepcopy(self._observers[key]))
            else:
                missing.append(key)
        if missing:  # a tensor the full-int8 model does not quantize: calibrate this candidate itself
            with torch.no_grad():
                for batch in self._batches(self.feeds):
                    prepared(*batch)
        return convert_pt2e(prepared)

    # -- measuring ---------------------------------------------------------------------------

    def _batches(self, feeds: list[dict[str, np.ndarray]]) -> list[tuple[Any, ...]]:
        import torch

        size = EVAL_BATCH if self.batched else 1
        out = []
        for start in range(0, len(feeds), size):
            chunk = feeds[start : start + size]
            arrays = [np.concatenate([f[n] for f in chunk]) for n in self.input_names]
            out.append(tuple(torch.from_numpy(a.astype(_dtype(a))) for a in arrays))
        return out

    def _run(self, module: Any, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        import torch

        per_output: list[list[np.ndarray]] = []
        with torch.no_grad():
            for batch in self._batches(feeds):
                outs = module(*batch)
                if not per_output:
                    per_output = [[] for _ in outs]
                for i, y in enumerate(outs):
                    per_output[i].append(y.float().numpy() if y.is_floating_point() else y.numpy())
        return [np.concatenate(chunks) for chunks in per_output]

    def metrics(self, outputs: list[np.ndarray], reference: list[np.ndarray]) -> dict[str, float]:
        """The search metrics (top-1 agreement, cosine, SNR, errors) of `outputs` against `reference`."""
        from mobex.metrics.parity import parity_summary

        summary = parity_summary(
            self.output_names, reference, outputs, task=self.options.task, labels=None, num_classes=None,
            class_output=self.options.class_output,
        )
        return {k: float(summary[k]) for k in _SEARCH_METRICS if isinstance(summary.get(k), (int, float))}

    def evaluate(self, candidate: Candidate, samples: int | None = None) -> dict[str, float]:
        """Metrics of a candidate against the float model on the (first `samples`) calibration feeds; for a
        candidate that passes on all of them, also on the held-out samples (`held_out_<metric>`)."""
        feeds = self.feeds if samples is None else self.feeds[:samples]
        metrics = self.metrics(self._run(candidate.twin, feeds), [r[: _count(feeds)] for r in self.reference])
        if samples is None and self.holdout and self.passes(metrics):
            held = self.metrics(self._run(candidate.twin, self.holdout), self.holdout_reference())
            metrics.update({f"{HELD_OUT}{k}": v for k, v in held.items()})
        return metrics

    def holdout_reference(self) -> list[np.ndarray]:
        if self._holdout_reference is None:
            self._holdout_reference = self._run(self.float_module, self.holdout)
        return self._holdout_reference

    def passes(self, metrics: dict[str, float]) -> bool:
        """Meets every limit (with the search's margins) that the metrics measure."""
        return all(
            metrics[m] >= limit if direction == "min" else metrics[m] <= limit
            for m, (limit, direction) in self.limits.items()
            if m in metrics
        )

    def search_passes(self, metrics: dict[str, float]) -> bool:
        """`passes` on the calibration data and, when there are held-out samples, on them too."""
        held = {k[len(HELD_OUT) :]: v for k, v in metrics.items() if k.startswith(HELD_OUT)}
        return self.passes(metrics) and (not self.holdout or (bool(held) and self.passes(held)))

    # -- the whole flow ----------------------------------------------------------------------

    def quantize(self) -> EtInt8Result:
        """Full int8; when it fails the limits on calibration data and fallback is on, search a fallback set."""
        start = time.perf_counter()
        plain = self.build()
        metrics = self.evaluate(plain)
        passed = self.search_passes(metrics) if self.limits else None
        result = EtInt8Result(
            plain, metrics, passed, equalization=self.equalization, corrected_biases=len(self._corrections),
            plain_metrics=dict(metrics),
        )  # fmt: skip
        if passed is False and self.options.fallback and self.options.max_fallback_layers > 0:
            search = search_fallback(
                self.ops,
                lambda skip, only: self.build(frozenset(skip), only),
                self.evaluate,
                self.search_passes,
                max_layers=self.options.max_fallback_layers,
                sensitivity_samples=min(self.options.sensitivity_samples, len(self.feeds)),
            )
            result.search = search
            result.candidate, result.metrics, result.passed = search.model, search.metrics, search.passed
            result.fallback = list(search.fallback)
        result.seconds = time.perf_counter() - start
        return result


def _observers(prepared: Any) -> dict[str, Any]:
    out = {}
    for node in prepared.graph.nodes:
        key = _observed_name(prepared, node)
        if key is not None:
            out[key] = getattr(prepared, node.target)
    return out


def _observed_name(prepared: Any, node: Any) -> str | None:
    """The name of the tensor an observer node watches, or None for any other node."""
    from torchao.quantization.pt2e.observer import ObserverBase

    if node.op != "call_module" or not isinstance(getattr(prepared, node.target, None), ObserverBase):
        return None
    return node.args[0].name


def _weight_bytes(module: Any) -> int:
    """Bytes of the constants the converted graph reads (int8 weights, float weights of float ops, scales)."""
    import operator

    seen = {n.target for n in module.graph.nodes if n.op == "get_attr"}
    tensors = [operator.attrgetter(t)(module) for t in sorted(seen)]
    return int(sum(t.numel() * t.element_size() for t in tensors if hasattr(t, "numel")))


def _dtype(x: np.ndarray) -> Any:
    return np.float32 if x.dtype == np.float64 else x.dtype


def _count(feeds: list[dict[str, np.ndarray]]) -> int:
    return sum(next(iter(f.values())).shape[0] for f in feeds)
