"""serve-model's telemetry: one JSON Lines record per predicted sample (docs/monitoring.md), written off the
request path by a background thread. When the writer falls behind, records are dropped and counted
(`mobex_telemetry_dropped_total`), never queued without bound and never allowed to slow a request.
"""

from __future__ import annotations

import json
import queue
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from mobex.errors import UsageError
from mobex.monitor.record import TELEMETRY_SCHEMA
from mobex.serving.model import ServedModel
from mobex.validate import stats as stats_mod

SERVER_APP_VERSION = "server"
SERVER_DEVICE_MODEL = "server"
MAX_QUEUE = 10_000
_STOP = object()


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def feature_summaries(plans: list[dict], tensors: dict[str, np.ndarray], n: int) -> list[dict[str, float]]:
    """Per sample, every reference-statistics feature of the planned tensors (rounded as the asset is)."""
    rows: list[dict[str, float]] = [{} for _ in range(n)]
    for plan in plans:
        values = tensors.get(plan["tensor"])
        if values is None:
            continue
        for fname, _kind, column in stats_mod.features(plan, np.asarray(values)):
            for row, value in zip(rows, stats_mod.rounded(column).tolist(), strict=True):
                row[fname] = value
    return rows


def prediction_records(
    model: ServedModel,
    arrays: dict[str, np.ndarray],
    outputs: list[np.ndarray],
    *,
    request_id: str,
    latency_ms: float,
    app_version: str = SERVER_APP_VERSION,
    device_model: str = SERVER_DEVICE_MODEL,
    classes: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The records of one predict request, one per sample, ids `<request id>-<sample index>`."""
    n = outputs[0].shape[0]
    inputs = feature_summaries(model.input_plans(), arrays, n)
    output_plans = [p for p in (model.reference_stats or {}).get("plans", []) if p.get("role") == "output"]
    named = {p["tensor"]: o for p, o in zip(output_plans, outputs, strict=False)}
    preds = feature_summaries(output_plans, named, n)
    stamp = now_rfc3339()
    records = []
    for i in range(n):
        prediction: dict[str, Any] = {"features": preds[i]} if preds[i] else {}
        if classes is not None:
            prediction.update({k: classes[i][k] for k in ("class", "label", "score")})
        records.append({
            "schema": TELEMETRY_SCHEMA,
            "kind": "prediction",
            "id": f"{request_id}-{i}",
            "timestamp": stamp,
            "app_version": app_version,
            "device_model": device_model,
            "model": model.info.to_dict(),
            "latency_ms": round(latency_ms, 4),
            "prediction": prediction,
            "input": {"features": inputs[i]},
        })  # fmt: skip
    return records


class TelemetrySink:
    """Appends records to a JSON Lines file from its own thread."""

    def __init__(self, path: Path, on_drop=None) -> None:  # noqa: ANN001 - a zero-argument callable
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise UsageError(f"cannot write telemetry to {self.path}: {exc.strerror or exc}") from None
        self._queue: queue.Queue = queue.Queue(MAX_QUEUE)
        self._on_drop = on_drop
        self._thread = threading.Thread(target=self._write, name="mobex-telemetry", daemon=True)
        self._thread.start()

    def emit(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                if self._on_drop is not None:
                    self._on_drop()

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=30)
        self._file.close()

    def _write(self) -> None:
        while True:
            record = self._queue.get()
            if record is _STOP:
                self._file.flush()
                return
            self._file.write(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
            if self._queue.empty():
                self._file.flush()
