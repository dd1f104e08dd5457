"""The Java telemetry writer (java/src/dev/mobex/telemetry, plain Java + Android's org.json), compiled and run:
its lines parse as the documented record, and `mobex monitor` reads them like serve-model's."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from mobex.monitor.record import LabelRecord, PredictionRecord, parse_line, read_telemetry
from mobex.monitor.report import run_monitor
from mobex.monitor.thresholds import thresholds_from

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "java" / "src" / "dev" / "mobex" / "telemetry").glob("*.java"))
ORG_JSON = Path("/usr/share/java/json-android.jar")  # Debian's libandroid-json-org-java

pytestmark = pytest.mark.skipif(
    shutil.which("javac") is None or shutil.which("java") is None,
    reason="no JDK installed (javac/java not on PATH); .ci/run installs default-jdk-headless",
)


@pytest.fixture(scope="module")
def classpath(tmp_path_factory: pytest.TempPathFactory) -> str:
    if not ORG_JSON.is_file():
        pytest.fail("Android's org.json is missing: apt-get install libandroid-json-org-java (see .ci/run)")
    classes = tmp_path_factory.mktemp("telemetry-classes")
    done = subprocess.run(
        ["javac", "-Xlint:all", "-Werror", "--release", "11", "-d", str(classes), "-cp", str(ORG_JSON),
         *map(str, SOURCES)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return f"{classes}:{ORG_JSON}"


def test_java_lines_parse_as_the_documented_record_and_monitor_reads_them(
    classpath: str, digits, served_model, tmp_path: Path  # noqa: ANN001
) -> None:
    from mobex.serving.telemetry import feature_summaries

    val = digits.validation()
    images, truth = val["image"], val["labels"]
    runner = served_model.runner()
    logits = np.concatenate([runner.run({"image": images[i : i + 1]})[0] for i in range(len(images))])
    classes = served_model.classify(logits, top_k=1)
    inputs = feature_summaries(served_model.input_plans(), {"image": images}, len(images))
    outputs = feature_summaries([served_model.output_plan(0)], {"logits": logits}, len(images))
    t0 = int(datetime(2026, 3, 2, 9, 0, tzinfo=UTC).timestamp() * 1000)
    rows = [
        {"id": f"java-{i}", "time_ms": t0 + i * 9_000, "app_version": "4.0.1", "device_model": "Pixel 8",
         "latency_ms": 0.05 + (i % 7) * 0.001, "class": classes[i]["class"], "label": classes[i]["label"],
         "score": classes[i]["score"], "input_features": inputs[i], "output_features": outputs[i],
         "truth": int(truth[i])}
        for i in range(len(images))
    ]  # fmt: skip
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": served_model.info.to_dict(), "predictions": rows}))
    out = tmp_path / "java.jsonl"
    done = subprocess.run(["java", "-cp", classpath, "dev.mobex.telemetry.TelemetryDemo", str(spec), str(out)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = out.read_bytes().splitlines()
    assert len(lines) == 2 * len(rows)
    parsed = [parse_line(line) for line in lines]
    assert not [p for p in parsed if isinstance(p, str)], [p for p in parsed if isinstance(p, str)][:3]
    predictions = [p for p in parsed if isinstance(p, PredictionRecord)]
    labels = [p for p in parsed if isinstance(p, LabelRecord)]
    assert len(predictions) == len(labels) == len(rows)
    first = predictions[0]
    assert first.timestamp == datetime(2026, 3, 2, 9, 0, tzinfo=UTC) and first.model.sha256 == served_model.info.sha256
    assert first.prediction.class_ == classes[0]["class"] and first.input.features == inputs[0]
    assert read_telemetry(out).malformed_total == 0
    report = run_monitor(digits.bundle, out, thresholds_from(None, {}), key=digits.public_key)
    overall = next(g for g in report.groups if g.segment == "all")
    assert overall.predictions == overall.labelled == len(rows)
    assert overall.accuracy == pytest.approx(digits.report["variants"][1]["parity"]["accuracy"])
    assert not report.alerts, report.alerts


def test_java_writer_refuses_what_monitor_would_count_as_malformed(classpath: str) -> None:
    done = subprocess.run(["java", "-cp", classpath, "dev.mobex.telemetry.TelemetryDemo", "--invalid"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    verdicts = done.stdout.splitlines()
    assert len(verdicts) == 6 and all(v.startswith("refused: ") for v in verdicts), verdicts
    assert "sha256" in verdicts[0] and "latency_ms" in verdicts[1] and "probability" in verdicts[4]
