"""`mobex monitor` on synthetic telemetry from the validation data: no alert, drift, accuracy, latency, bad lines."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mobex.monitor.report import run_monitor
from mobex.monitor.thresholds import thresholds_from
from tests.serving.conftest import cli_env

from .conftest import make_telemetry


def monitor_cli(*args: str) -> tuple[int, dict, str]:
    done = subprocess.run([sys.executable, "-m", "mobex", "monitor", *args, "--json"], capture_output=True,
                          text=True, timeout=300, env=cli_env())  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout) if done.stdout.strip() else {}, done.stderr


def metrics_of(report: dict) -> set[str]:
    return {a["metric"] for a in report["alerts"]}


@pytest.fixture(scope="module")
def clean(digits, served_model, tmp_path_factory) -> Path:  # noqa: ANN001
    return make_telemetry(digits, served_model, tmp_path_factory.mktemp("clean"))


def test_telemetry_like_the_validation_data_raises_no_alert(digits, clean, tmp_path: Path) -> None:
    html = tmp_path / "monitor.html"
    code, report, err = monitor_cli(str(digits.bundle), str(clean), "--key", str(digits.public_key),
                                    "--build-report", str(digits.report_path), "--html", str(html))  # fmt: skip
    assert code == 0, (err, report.get("alerts"))
    assert report["records"]["used"] == 3 * 4 * 360 and report["records"]["malformed"] == 0
    assert report["records"]["unlabelled"] == 0 and report["verification"].startswith("signature verified")
    overall = [g for g in report["groups"] if g["segment"] == "all"]
    assert [g["window_start"] for g in overall] == [f"2026-03-02T{h:02d}:00:00Z" for h in (9, 10, 11)]
    segments = {g["segment"] for g in report["groups"]}
    assert {"app_version=3.1.0", "app_version=3.2.0", "device_model=Pixel 8", "device_model=Galaxy S24"} < segments
    validated = report["validated"]["metrics"]
    for g in overall:
        assert g["accuracy"] == pytest.approx(validated["accuracy"]) and g["f1"] == pytest.approx(validated["f1"])
        assert g["max_psi"] < 0.05 and not g["drifted_features"]  # int8 scores vs the reference (torch) ones
        assert g["throughput_per_s"] == pytest.approx(4 * 360 / 3600)
        assert g["p50_ms"] == pytest.approx(report["validated"]["latency"]["p50_ms"], rel=0.1)
    assert html.read_text().startswith("<!doctype html>")


def test_shifted_inputs_are_drift_and_exit_6_naming_it(digits, served_model, tmp_path: Path) -> None:
    folder = make_telemetry(digits, served_model, tmp_path / "t", hours=1, transform=lambda x: x * 0.6)
    code, report, err = monitor_cli(str(digits.bundle), str(folder))
    assert code == 6
    assert "drift" in metrics_of(report) and "alert: drift:" in err
    overall = next(g for g in report["groups"] if g["segment"] == "all")
    assert "image.mean[c0]" in overall["drifted_features"] and overall["max_psi"] > 0.2
    assert report["verification"].startswith("NOT verified")


def test_twenty_percent_flipped_labels_raise_an_accuracy_alert(digits, served_model, tmp_path: Path) -> None:
    folder = make_telemetry(digits, served_model, tmp_path / "t", hours=1, flip=0.2, late_labels=False)
    code, report, err = monitor_cli(str(digits.bundle), str(folder / "predictions.jsonl"))
    assert code == 6 and {"accuracy", "f1"} <= metrics_of(report), report["alerts"]
    assert "drift" not in metrics_of(report)
    overall = next(g for g in report["groups"] if g["segment"] == "all")
    assert 0.75 < overall["accuracy"] < 0.85 and overall["labelled"] == 4 * 360
    alert = next(a for a in report["alerts"] if a["metric"] == "accuracy" and a["segment"] == "all")
    assert alert["validated"] == pytest.approx(report["validated"]["metrics"]["accuracy"]) and alert["limit"] == 0.05
    assert "below the validated" in alert["message"]


def test_slow_latencies_raise_a_latency_alert_in_their_window(digits, served_model, tmp_path: Path) -> None:
    folder = make_telemetry(digits, served_model, tmp_path / "t", hours=2, latency_scale=lambda h: 10.0 if h else 1.0)
    code, report, _ = monitor_cli(str(digits.bundle), str(folder), "--build-report", str(digits.report_path))
    assert code == 6
    latency = [a for a in report["alerts"] if a["metric"].endswith("_ratio")]
    assert latency and {a["window_start"] for a in latency} == {"2026-03-02T10:00:00Z"}
    assert {a["metric"] for a in latency} == {"p50_ms_ratio", "p99_ms_ratio"}
    assert all(9 < a["value"] < 11 for a in latency if a["metric"] == "p50_ms_ratio")
    # without the build's report there is nothing to compare with, unless an absolute limit is given
    report = run_monitor(digits.bundle, folder, thresholds_from(None, {}))
    assert report.exit_code == 0 and any("no build latency" in n for n in report.notes)
    p99 = max(g.p99_ms for g in report.groups if g.window_start.startswith("2026-03-02T09"))
    report = run_monitor(digits.bundle, folder, thresholds_from(None, {"max_p99_ms": p99 * 2}))
    assert report.exit_code == 6 and {a["metric"] for a in report.alerts} == {"p99_ms"}


def test_malformed_lines_are_counted_and_reported_never_crash(digits, clean, tmp_path: Path) -> None:
    folder = tmp_path / "t"
    folder.mkdir()
    good = (clean / "predictions.jsonl").read_text().splitlines()[:200]
    record = json.loads(good[0])
    bad = [
        "not json at all",
        "[1, 2, 3]",
        json.dumps({**record, "schema": "https://example.com/other"}),
        json.dumps({**record, "latency_ms": -1}),
        json.dumps({**record, "timestamp": "2026-03-02 09:00:00"}),  # no time zone
        json.dumps({k: v for k, v in record.items() if k != "model"}),
        json.dumps({**record, "prediction": {"score": 7}}),
        '{"schema": "https://mobex.dev/schemas/telemetry/v1", "latency_ms": NaN}',
        "[" * 100_000,
        "x" * (2 << 20),  # over the 1 MiB line limit
        "\udcff".encode("utf-8", "surrogatepass").decode("latin-1"),
    ]
    (folder / "a.jsonl").write_text("\n".join(good[:100] + bad + good[100:]) + "\n\n", encoding="utf-8")
    (folder / "b.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")
    code, report, _ = monitor_cli(str(digits.bundle), str(folder))
    rec = report["records"]
    assert code == 0 and rec["used"] == 200 and rec["files"] == 2
    assert rec["malformed"] == len(bad) + 1, rec
    reasons = " | ".join(rec["malformed_by_reason"])
    for needle in ("not JSON", "not a JSON object", "schema is not", "latency_ms", "time zone", "model:", "score",
                   "longer than"):  # fmt: skip
        assert needle in reasons, (needle, reasons)
    assert rec["malformed_examples"][0].startswith("a.jsonl:101:")


def test_thresholds_come_from_the_recipe_and_the_command_line(digits, served_model, tmp_path: Path) -> None:
    folder = make_telemetry(digits, served_model, tmp_path / "t", hours=1, flip=0.2)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text((digits.folder / "recipe.toml").read_text() + '\n[monitoring]\nwindow = "30m"\n'
                      "max_accuracy_drop = 0.5\nmax_f1_drop = 0.5\n")  # fmt: skip
    for name in ("model.py", "weights.safetensors", "labels.txt"):  # copies: recipe files stay in its folder
        shutil.copyfile(digits.folder / name, tmp_path / name)
    shutil.copytree(digits.folder / "data", tmp_path / "data")
    t = thresholds_from(recipe, {})
    assert (t.window, t.max_accuracy_drop, t.psi) == ("30m", 0.5, 0.2)
    report = run_monitor(digits.bundle, folder, t)
    assert not report.alerts and len([g for g in report.groups if g.segment == "all"]) == 2
    stricter = thresholds_from(recipe, {"max_accuracy_drop": 0.1, "window": "1h"})
    assert {a["metric"] for a in run_monitor(digits.bundle, folder, stricter).alerts} == {"accuracy"}
    code, _, err = monitor_cli(str(digits.bundle), str(folder), "--psi", "-1")
    assert code == 2 and "invalid monitoring threshold" in err


def test_records_of_other_models_or_versions_are_counted_not_used(digits, clean, tmp_path: Path) -> None:
    lines = (clean / "predictions.jsonl").read_text().splitlines()[:150]
    other = [json.loads(line) for line in lines[:20]]
    for r in other[:10]:
        r["model"]["version"] = "0.9.0"
    for r in other[10:]:
        r["model"]["name"] = "other-model"
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines[20:] + [json.dumps(r) for r in other]) + "\n")
    report = run_monitor(digits.bundle, path, thresholds_from(None, {})).to_dict()
    assert (report["records"]["used"], report["records"]["other_version"], report["records"]["other_model"]) == (
        130, 10, 10)  # fmt: skip
    assert report["records"]["unlabelled"] == 130  # labels.jsonl not read: they are in another file
    assert np.isfinite(report["groups"][0]["p50_ms"])
