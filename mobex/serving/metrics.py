"""Prometheus metrics of the model server (prometheus-client, one registry per app, text exposition)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mobex.serving.model import ServedModel

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServingMetrics:
    """Requests, errors, latency, batch sizes, the model version and predicted classes."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("mobex_requests", "HTTP requests by endpoint and status code", ["endpoint", "code"],
                                registry=r)  # fmt: skip
        self.errors = Counter("mobex_request_errors", "Refused or failed requests by reason", ["endpoint", "reason"],
                              registry=r)  # fmt: skip
        self.latency = Histogram("mobex_request_duration_seconds", "Time from request to response", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.inference = Histogram("mobex_inference_seconds", "Checked inputs to outputs per predict request "
                                   "(waiting for a worker or a batch included)", buckets=LATENCY_BUCKETS,
                                   registry=r)  # fmt: skip
        self.batch_size = Histogram("mobex_batch_size", "Real samples per model invocation (padding excluded)",
                                    buckets=BATCH_BUCKETS, registry=r)  # fmt: skip
        self.model_info = Gauge("mobex_model_info", "The model being served (value 1)",
                                ["name", "version", "sha256"], registry=r)  # fmt: skip
        self.predictions = Counter("mobex_predictions", "Predicted classes of a classifier", ["label"], registry=r)
        self.updates = Counter("mobex_model_updates", "Channel updates by result (swapped, rejected)", ["result"],
                               registry=r)  # fmt: skip
        self.telemetry_dropped = Counter("mobex_telemetry_dropped", "Telemetry records dropped (writer behind)",
                                         registry=r)  # fmt: skip

    def serving(self, model: ServedModel, previous: ServedModel | None = None) -> None:
        if previous is not None:
            try:
                self.model_info.remove(*previous.info.to_dict().values())
            except KeyError:
                pass
        self.model_info.labels(*model.info.to_dict().values()).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
