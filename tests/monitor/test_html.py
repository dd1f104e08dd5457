"""The monitoring report page: self-contained, time-series plots as inline SVG, rendered by headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mobex.monitor.html import render_monitor_html
from mobex.monitor.report import run_monitor
from mobex.monitor.thresholds import thresholds_from

from .conftest import make_telemetry

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PLOTS = ("accuracy and F1 per window", "latency per window", "largest PSI per window",
         "predictions per second per window")  # fmt: skip


@pytest.fixture(scope="module")
def page(digits, served_model, tmp_path_factory) -> Path:  # noqa: ANN001
    """Three hours of telemetry, the last one with shifted inputs and flipped labels: plots with alerts."""
    folder = tmp_path_factory.mktemp("html")
    make_telemetry(digits, served_model, folder / "ok", hours=2)
    late = make_telemetry(digits, served_model, folder / "bad", hours=3, transform=lambda x: x * 0.6, flip=0.2)
    (folder / "ok" / "late.jsonl").write_text(
        "".join(line + "\n" for line in (late / "predictions.jsonl").read_text().splitlines()
                if '"timestamp": "2026-03-02T11' in line) + "this line is broken\n"
    )  # fmt: skip
    labels = [json.loads(line) for line in (late / "labels.jsonl").read_text().splitlines()]
    (folder / "ok" / "late-labels.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in labels if r["id"].startswith("h2-"))
    )
    report = run_monitor(digits.bundle, folder / "ok", thresholds_from(None, {}), key=digits.public_key,
                         build_report=digits.report_path)  # fmt: skip
    assert {a["window_start"] for a in report.alerts} == {"2026-03-02T11:00:00Z"}
    path = folder / "monitor.html"
    path.write_text(render_monitor_html(report.to_dict()))
    return path


def test_page_is_self_contained_with_four_time_series(page: Path) -> None:
    text = page.read_text()
    for external in ("<script", "<link", "src=", "http://", "@import"):
        assert external not in text.replace('xmlns="http://www.w3.org/2000/svg"', ""), external
    for label in PLOTS:
        assert f'aria-label="{label}"' in text, label
    assert "<h2>Alerts</h2>" in text and "accuracy" in text and "<h2>Malformed lines</h2>" in text
    assert "validated accuracy" in text and "PSI threshold" in text and "build p99" in text


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_page_renders_in_headless_chromium(page: Path, tmp_path: Path) -> None:
    flags = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1800",
    ]  # fmt: skip
    url = page.resolve().as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    assert dom.count("<svg") == 4, dom[:500]
    assert dom.count("<polyline") >= 7  # accuracy, F1, p50, p90, p99, PSI, throughput: one line each over 3 windows
    assert dom.count("<circle") >= 21 and "ALERT(S)" in dom
    shot = tmp_path / "page.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    from PIL import Image

    image = Image.open(shot).convert("L")
    assert image.size == (1400, 1800)
    non_white = sum(image.histogram()[:250]) / (1400 * 1800)
    assert non_white > 0.03, f"the page renders nearly blank ({non_white:.1%} non-white pixels)"
