"""Automatic float fallback for static int8: the smallest set of ops to keep in float that passes the gate.

Measured, not guessed:
1. Sensitivity: for every quantizable op, a model where *only that op* is int8 (everything else float)
   is run on (a subset of) the calibration data; the op's damage is the SNR of the model output
   against the float model. Quantization noise of separate ops adds up roughly independently at the
   output, so the ops with the lowest SNR are the ones worth keeping in float.
2. Search: keep the k most damaging ops in float, for k = 1, 2, 4, ... up to `max_layers`, measuring
   each candidate on the full calibration set against the gate limits; then bisect down to the
   smallest passing k, and finally drop from that set every op whose removal still passes.

Every candidate is a real quantized model run in LiteRT, so the chosen set is one that was measured
to pass on the calibration data. The validation split is never used here (no tuning on it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mobex.quantize.candidates import CandidatePool, current_pool
from mobex.quantize.tflite.graph import DATA_MOVEMENT_OPS, OpInfo

Metrics = dict[str, float]
# Builds the quantized model keeping `float_ops` in float, or (only=op) with only that op quantized.
Build = Callable[[frozenset[str], "str | None"], bytes]
# Runs a quantized model on the calibration data (the first `samples`, or all) -> parity metrics.
Evaluate = Callable[[bytes, "int | None"], Metrics]
# The labels of the ops a build keeps in float besides the chosen ones (cheap ops between float ops).
Islands = Callable[[frozenset[str]], list[str]]

DAMAGE_FLOOR_DB = 60.0  # an op whose int8 version keeps the output above this SNR is not worth a trial


@dataclass
class Trial:
    fallback: list[str]  # op labels kept in float
    metrics: Metrics
    passed: bool
    size_bytes: int
    islands: list[str] = field(default_factory=list)  # op labels the build kept in float too (not chosen)

    def to_dict(self) -> dict:
        return {
            "fallback": self.fallback,
            "islands": self.islands,
            "passed": self.passed,
            "size_bytes": self.size_bytes,
            "metrics": {k: round(v, 6) for k, v in self.metrics.items()},
        }


@dataclass
class SearchResult:
    fallback: list[OpInfo]  # in graph order
    passed: bool
    model: bytes  # the chosen model (the best measured one when nothing passed)
    metrics: Metrics
    sensitivity: list[tuple[OpInfo, float]] = field(default_factory=list)  # (op, output SNR dB), worst first
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0
    sensitivity_ran_on: str = ""  # where the sensitivity candidates were measured (mobex.quantize.candidates)


def sensitivity(
    ops: Sequence[OpInfo], build: Build, evaluate: Evaluate, samples: int | None, pool: CandidatePool | None = None
) -> list[tuple[OpInfo, float]]:
    """(op, output SNR in dB with only that op in int8), lowest SNR (most damaging) first.

    The candidates are independent, so they go to `pool` (default: `current_pool()`, this process unless a
    Ray export task installed its pool); `build` and `evaluate` travel to it together as the shared value."""
    scored_ops = [op for op in ops if op.kind not in DATA_MOVEMENT_OPS]
    pool = pool or current_pool()
    metrics = pool.map(only_op_metrics, (build, evaluate), [(op.scope, samples) for op in scored_ops])
    scored = [(op, float(m.get("snr_db", float("inf")))) for op, m in zip(scored_ops, metrics, strict=True)]
    scored.sort(key=lambda item: (item[1], item[0].index))
    return scored


def only_op_metrics(measure: tuple[Build, Evaluate], candidate: tuple[str, int | None]) -> Metrics:
    """One sensitivity candidate: the model with only op `scope` in int8, measured on the first `samples` feeds."""
    build, evaluate = measure
    scope, samples = candidate
    return evaluate(build(frozenset(), scope), samples)


def search_fallback(
    ops: Sequence[OpInfo],
    build: Build,
    evaluate: Evaluate,
    passes: Callable[[Metrics], bool],
    *,
    max_layers: int,
    sensitivity_samples: int | None = 32,
    islands: Islands | None = None,
) -> SearchResult:
    """Find the smallest set of `ops` to keep in float so that `passes(evaluate(model))` holds."""
    start = time.perf_counter()
    trials: list[Trial] = []
    cache: dict[frozenset[str], tuple[bytes, Metrics, bool]] = {}
    by_scope = {op.scope: op for op in ops}

    def measure(scopes: frozenset[str]) -> tuple[bytes, Metrics, bool]:
        if scopes not in cache:
            model = build(scopes, None)
            metrics = evaluate(model, None)
            ok = passes(metrics)
            cache[scopes] = (model, metrics, ok)
            labels = [by_scope[s].label for s in sorted(scopes, key=lambda s: by_scope[s].index)]
            extra = islands(scopes) if islands is not None and scopes else []
            trials.append(Trial(labels, metrics, ok, len(model), extra))
        return cache[scopes]

    model, metrics, ok = measure(frozenset())
    if ok or max_layers <= 0:
        return SearchResult([], ok, model, metrics, [], trials, time.perf_counter() - start)

    pool = current_pool()
    ranked = sensitivity(ops, build, evaluate, sensitivity_samples, pool)
    order = [op for op, snr in ranked if snr < DAMAGE_FLOOR_DB][:max_layers]

    def prefix(k: int) -> frozenset[str]:
        return frozenset(op.scope for op in order[:k])

    # Grow k geometrically until a prefix passes, then bisect between the last failing and first passing k.
    found, last_fail, k = None, 0, 1
    while order:
        k = min(k, len(order))
        if measure(prefix(k))[2]:
            found = k
            break
        last_fail = k
        if k == len(order):
            break
        k *= 2
    if found is not None:
        lo, hi = last_fail, found
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if measure(prefix(mid))[2]:
                hi = mid
            else:
                lo = mid
        chosen = set(prefix(hi))
        # Drop ops that turn out not to be needed (least damaging first).
        rank = {op.scope: i for i, op in enumerate(order)}
        for op in sorted((o for o in order if o.scope in chosen), key=lambda o: -rank[o.scope]):
            if len(chosen) == 1:
                break
            trial = frozenset(chosen - {op.scope})
            if measure(trial)[2]:
                chosen = set(trial)
        model, metrics, ok = measure(frozenset(chosen))
        fallback = sorted((by_scope[s] for s in chosen), key=lambda o: o.index)
    else:
        # Nothing passed within max_layers: keep the measured candidate closest to the gate (on top-1
        # agreement, then the fewest float ops, then SNR), so the report shows the best int8 can do here.
        best = max(
            cache.items(),
            key=lambda kv: (kv[1][1].get("top1_agreement", 0.0), -len(kv[0]), kv[1][1].get("snr_db", 0.0)),
        )
        scopes, (model, metrics, ok) = best
        fallback = sorted((by_scope[s] for s in scopes), key=lambda o: o.index)
    return SearchResult(fallback, ok, model, metrics, ranked, trials, time.perf_counter() - start, pool.name)
