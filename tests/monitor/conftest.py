"""Synthetic field telemetry made from the validation data of a real build, run through the bundle's model."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tests.serving import builds

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
APP_VERSIONS = ("3.1.0", "3.2.0")
DEVICES = ("Pixel 8", "Galaxy S24")


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> builds.Built:
    return builds.digits(tmp_path_factory)


@pytest.fixture(scope="session")
def served_model(digits, tmp_path_factory):  # noqa: ANN001, ANN201
    """The bundle opened as serve-model opens it (verified, extracted), for its runner and feature plans."""
    from mobex.serving.bundle import open_bundle_zip
    from mobex.serving.model import ServedModel

    return ServedModel(open_bundle_zip(digits.bundle, digits.public_key))


def build_latency_samples(digits) -> list[float]:  # noqa: ANN001
    shipped = next(v for v in digits.report["variants"] if v["shipped"])
    return shipped["latency"]["samples_ms"]


def label_record(rid: str, ts: datetime, label: int) -> dict:
    return {"schema": "https://mobex.dev/schemas/telemetry/v1", "kind": "label", "id": rid, "timestamp": ts.isoformat(),
            "label": label}  # fmt: skip


def make_telemetry(
    digits, model, path: Path, *, hours: int = 3, transform=None, flip: float = 0.0, latency_scale=None,  # noqa: ANN001
    late_labels: bool = True, seed: int = 0,
) -> Path:  # fmt: skip
    """Every validation sample once per (hour, app version, device), as serve-model writes records.

    `transform(images)` shifts the inputs, `flip` relabels that fraction of ground truths, and
    `latency_scale(hour) -> factor` slows some hours. Labels arrive later as label records.
    """
    from mobex.serving.telemetry import feature_summaries

    val = digits.validation()
    images = val["image"] if transform is None else transform(val["image"]).astype(np.float32)
    runner = model.runner()
    logits = np.concatenate([runner.run({"image": images[i : i + 1]})[0] for i in range(len(images))])
    classes = model.classify(logits, top_k=1)
    inputs = feature_summaries(model.input_plans(), {"image": images}, len(images))
    outs = feature_summaries([model.output_plan(0)], {"logits": logits}, len(images))
    rng = np.random.default_rng(seed)
    truth = val["labels"].copy()
    flipped = rng.random(len(truth)) < flip
    truth[flipped] = (truth[flipped] + 1) % 10
    latencies = build_latency_samples(digits)
    lines, labels = [], []
    n = len(images)
    for hour in range(hours):
        scale = latency_scale(hour) if latency_scale else 1.0
        for a, app in enumerate(APP_VERSIONS):
            for d, device in enumerate(DEVICES):
                for i in range(n):
                    ts = START + timedelta(hours=hour, seconds=(i * 3600 / n + a * 7 + d * 3) % 3599)
                    rid = f"h{hour}-a{a}-d{d}-{i}"
                    lines.append({
                        "schema": "https://mobex.dev/schemas/telemetry/v1", "kind": "prediction", "id": rid,
                        "timestamp": ts.isoformat().replace("+00:00", "Z"), "app_version": app, "device_model": device,
                        "model": model.info.to_dict(), "latency_ms": latencies[i % len(latencies)] * scale,
                        "prediction": {"class": classes[i]["class"], "label": classes[i]["label"],
                                       "score": classes[i]["score"], "features": outs[i]},
                        "input": {"features": inputs[i]},
                        **({} if late_labels else {"label": int(truth[i])}),
                    })  # fmt: skip
                    if late_labels:
                        labels.append(label_record(rid, ts + timedelta(minutes=5), int(truth[i])))
    path.mkdir(parents=True, exist_ok=True)
    (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if labels:
        (path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    return path
