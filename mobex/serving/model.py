"""A served model: a verified bundle, its I/O contract, and one runner (interpreter) per worker thread.

LiteRT interpreters are not thread-safe, so each worker thread builds its own runner on first use
and keeps it (`threading.local`); a model swap makes a new ServedModel, whose runners the threads
build afresh, while requests already running finish on the old one. The old model's private
folder is removed once it is retired and its last request has released it.

A request carries N samples; the model takes B per invocation (the manifest's batch axis). N is
split into invocations of B samples, the last one padded by repeating its last sample, and the
padding rows are dropped from the outputs.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from mobex.bundle.manifest import check_relative_posix
from mobex.errors import UsageError
from mobex.serving.bundle import LoadedBundle
from mobex.serving.contract import DEFAULT_MAX_SAMPLES, IOContract
from mobex.serving.runners import Runner, resolve_factory
from mobex.validate import stats as stats_mod
from mobex.validate.drift import REFERENCE_STATS_ASSET

DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class RunResult:
    outputs: list[np.ndarray]
    sizes: list[int]  # real samples per invocation (padding excluded)
    invocation_s: float  # mean model time per invocation: what telemetry reports as latency_ms


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


class ServedModel:
    """One loaded bundle; call `acquire`/`release` around each request that uses it."""

    def __init__(self, bundle: LoadedBundle, *, threads: int = 1, max_samples: int = DEFAULT_MAX_SAMPLES) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.info = ModelInfo(self.manifest.name, self.manifest.version, bundle.sha256)
        self.contract = IOContract.from_manifest(self.manifest, max_samples)
        self.threads = threads
        self.format = str(self.manifest.model["format"])
        self._factory = resolve_factory(self.format)
        self.reference_stats = _reference_stats(bundle)
        self.labels: list[str] | None = self.manifest.labels
        self.is_classifier = self.manifest.task == "classification"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._retired = False

    # --- lifetime ----------------------------------------------------------------------------

    def acquire(self) -> ServedModel:
        with self._lock:
            self._in_flight += 1
        return self

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1
            done = self._retired and self._in_flight == 0
        if done:
            self.bundle.cleanup()

    def retire(self) -> None:
        """No new requests will use this model; remove its files after the last running one."""
        with self._lock:
            self._retired = True
            done = self._in_flight == 0
        if done:
            self.bundle.cleanup()

    # --- inference ---------------------------------------------------------------------------

    def runner(self) -> Runner:
        """This thread's runner, built on first use (one interpreter per worker thread)."""
        runner = getattr(self._local, "runner", None)
        if runner is None:
            runner = self._factory(self.bundle.model_path, self.threads)
            self._local.runner = runner
        return runner

    def warm_up(self) -> None:
        """Build a runner and run it once on a neutral input, so a model that cannot run fails now."""
        feed = {}
        for spec in self.contract.inputs:
            lo = self.contract.value_range[0] if self.contract.value_range else 0
            feed[spec.name] = np.full((1, *spec.sample_shape), lo, dtype=spec.request_dtype)
        try:
            self.run_samples(feed, 1)
        except UsageError:
            raise
        except Exception as exc:  # noqa: BLE001 - any runtime failure means: do not serve this model
            raise UsageError(f"{self.info.name} {self.info.version}: the model does not run: {exc}") from exc

    def run_samples(self, arrays: dict[str, np.ndarray], n: int) -> RunResult:
        """Outputs ([N, ...] each) for N samples, with the samples and model time of each invocation."""
        b = self.contract.batch
        runner = self.runner()
        chunks: list[list[np.ndarray]] = []
        sizes, seconds = [], 0.0
        for lo in range(0, n, b):
            k = min(b, n - lo)
            feed = {name: _padded(a[lo : lo + k], b) for name, a in arrays.items()}
            start = time.perf_counter()
            outs = runner.run(feed)
            seconds += time.perf_counter() - start
            chunks.append([_batch_axis(np.asarray(o), b)[:k] for o in outs])
            sizes.append(k)
        outputs = [np.concatenate([c[i] for c in chunks], axis=0) for i in range(len(chunks[0]))]
        return RunResult(outputs, sizes, seconds / len(sizes))

    # --- classifiers -------------------------------------------------------------------------

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Class probabilities [N, classes]: softmax of the scores unless they already are probabilities."""
        flat = scores.reshape(scores.shape[0], -1).astype(np.float64)
        plan = self.output_plan(0)
        softmax = plan.get("softmax") if plan else None
        if softmax is None:
            softmax = not (flat.min() >= 0 and flat.max() <= 1 and np.allclose(flat.sum(axis=1), 1.0, atol=1e-3))
        if not softmax:
            return flat
        exp = np.exp(flat - flat.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def classify(self, scores: np.ndarray, top_k: int = DEFAULT_TOP_K) -> list[dict[str, Any]]:
        """Per sample: the predicted class, its label and probability, and the top-k classes."""
        probs = self.probabilities(scores)
        k = max(1, min(top_k, probs.shape[1]))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        out = []
        for row, best in zip(probs, order, strict=True):
            top = [{"class": int(c), "label": self.label_of(int(c)), "score": float(row[c])} for c in best]
            out.append({**top[0], "top_k": top})
        return out

    @property
    def num_classes(self) -> int:
        """Scores per sample of a classifier's first output (the most top_k can ask for)."""
        return int(np.prod(self.contract.outputs[0].sample_shape)) if self.contract.outputs else 0

    def label_of(self, index: int) -> str:
        return self.labels[index] if self.labels and 0 <= index < len(self.labels) else str(index)

    def output_plan(self, index: int) -> dict | None:
        plans = [p for p in (self.reference_stats or {}).get("plans", []) if p.get("role") == "output"]
        return plans[index] if index < len(plans) else None

    def input_plans(self) -> list[dict]:
        return [p for p in (self.reference_stats or {}).get("plans", []) if p.get("role") == "input"]

    def describe(self) -> dict[str, Any]:
        """`GET /v1/models/{name}`: the manifest's I/O contract and how this server runs it."""
        m = self.manifest
        return {
            "model": self.info.to_dict(),
            "platform": m.platform,
            "task": m.task,
            "format": self.format,
            "quantization": m.model.get("quantization"),
            "inputs": m.model["inputs"],
            "outputs": m.model["outputs"],
            "preprocessing": m.preprocessing,
            "labels": m.labels,
            "batch": self.contract.batch,
            "max_samples_per_request": self.contract.max_samples,
            "validated": {k: (m.metrics.get("parity") or {}).get(k) for k in ("accuracy", "precision", "recall", "f1")},
        }


def _padded(a: np.ndarray, b: int) -> np.ndarray:
    if a.shape[0] == b:
        return a
    return np.concatenate([a, np.repeat(a[-1:], b - a.shape[0], axis=0)], axis=0)


def _batch_axis(out: np.ndarray, b: int) -> np.ndarray:
    if out.ndim and out.shape[0] == b:
        return out
    if b == 1:
        return out[None]
    raise UsageError(f"a model output has shape {list(out.shape)}, without the batch axis of {b}")


def _reference_stats(bundle: LoadedBundle) -> dict | None:
    rel = str(bundle.manifest.model.get("reference_stats_file") or REFERENCE_STATS_ASSET)
    try:
        path = bundle.root / check_relative_posix(rel, "model.reference_stats_file")
    except ValueError:
        return None
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if data.get("schema") == stats_mod.STATS_SCHEMA else None
