"""report.html (self-contained, plots, tolerant of extra keys, renders in a real browser) and junit.xml."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from mobex.validate.html import render_html
from mobex.validate.report import bundled_report, render_junit, write_reports
from tests.system_deps import require_system

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_is_self_contained_with_plots_and_tables(built_digits) -> None:
    page = (built_digits.out / "report.html").read_text()
    assert page.startswith("<!doctype html>")
    for external in ("<script", "<link", "src=", "http://", "@import"):
        assert external not in page.replace('xmlns="http://www.w3.org/2000/svg"', ""), external
    plots = (
        "size vs accuracy",
        "absolute error histogram of android/dynamic-int8",
        "absolute error histogram of ios/fp16",
        "latency distribution per variant and thread count",
    )
    for label in plots:
        assert f'aria-label="{label}' in page, label
    for heading in ("Variants", "Parity with the original model", "Task metrics", "Latency", "Gates", "Data checks"):
        assert f"<h2>{heading}</h2>" in page
    assert "phones differ" in page and "peak memory" in page


def test_html_shows_failures_and_keys_it_does_not_know(built_digits) -> None:
    report = copy.deepcopy(built_digits.report)
    report["status"] = "failed"
    report["failures"] = ["android: no variant passed its gates"]
    v = report["variants"][1]
    v["passed"] = False
    v["gates"][0] = {**v["gates"][0], "passed": False, "message": "cosine_min = 0.5 (must be >= 0.95): FAILED"}
    v["int8_fallback"] = {"layers_kept_float": ["conv1"]}  # e.g. added by the int8 fallback work
    report["pruning"] = {"method": "magnitude", "sparsity": 0.5, "accuracy_original": 0.99}
    report["something_new"] = {"answer": 42}
    report["variants"].append({"platform": "ios", "quantization": "w8a8", "status": "conversion failed: boom",
                               "gates": [], "passed": False})  # fmt: skip
    page = render_html(report)
    assert "FAILED" in page and "no variant passed its gates" in page
    assert "cosine_min = 0.5 (must be &gt;= 0.95): FAILED" in page
    assert "layers_kept_float" in page and "<h2>Pruning</h2>" in page and "something_new" in page
    assert "conversion failed: boom" in page


def test_junit_has_one_case_per_gate(built_digits) -> None:
    root = ET.fromstring((built_digits.out / "junit.xml").read_bytes())
    cases = root.findall(".//testcase")
    gates = [(v["id"], g["metric"]) for v in built_digits.report["variants"] for g in v["gates"]]
    assert len(cases) == len(gates)
    assert {(c.get("classname").removeprefix("mobex.").replace(".", "/", 1), c.get("name")) for c in cases} == set(
        gates
    )
    assert all(c.find("failure") is None for c in cases)
    broken = copy.deepcopy(built_digits.report)
    broken["variants"][0]["gates"][0]["passed"] = False
    suites = ET.fromstring(render_junit(broken)).findall("testsuite")
    assert sum(int(s.get("failures")) for s in suites) == 1


def test_bundle_report_drops_volatile_fields(built_digits) -> None:
    inner = bundled_report(built_digits.report)
    assert "timings" not in inner and set(inner["reference"]) == {"backend", "metrics"}
    for v in inner["variants"]:
        assert "latency" not in v and "latency_by_threads" not in v
        assert v["parity"] is None or "abs_error_histogram" in v["parity"]["outputs"][0]


def test_bundle_report_keeps_the_recurrent_decision_without_its_timings(built_digits) -> None:
    report = copy.deepcopy(built_digits.report)
    measured = {"kept_float": True, "why": "int8 was not faster", "int8": {"p50_ms": 0.9, "snr_db": 30.0},
                "float": {"p50_ms": 0.8, "snr_db": 41.0}}  # fmt: skip
    report["variants"][1]["quantization_details"] = {"recurrent": measured, "cost": {"p50_ms": {}}}
    inner = bundled_report(report)["variants"][1]["quantization_details"]
    assert inner == {"recurrent": {"kept_float": True, "why": "int8 was not faster", "int8": {"snr_db": 30.0},
                                   "float": {"snr_db": 41.0}}}  # fmt: skip


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser, checked before the session's digits build is made (session fixtures come first)."""
    require_system(CHROMIUM is not None, "chromium (headless, to render report.html)", "chromium")
    return str(CHROMIUM)


def test_report_renders_in_headless_chromium(chromium: str, built_digits, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    write_reports(built_digits.report, out)
    url = (out / "report.html").resolve().as_uri()
    flags = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000",
    ]  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    # After parsing and layout the SVG plots are real elements, not text: 1 scatter, 4 histograms, 1 latency plot.
    assert dom.count("<svg") == 6, dom[:500]
    assert dom.count("<circle") > 40  # variant points + one dot per timed run
    assert "android/dynamic-int8" in dom and "PASSED" in dom
    shot = tmp_path / "page.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    try:
        from PIL import Image
    except ImportError:  # no Pillow: a blank 1280x2000 PNG compresses to a few KiB, this page to ~200 KiB
        assert shot.stat().st_size > 50_000
        return
    image = Image.open(shot).convert("L")
    assert image.size == (1280, 2000)
    non_white = sum(image.histogram()[:250]) / (1280 * 2000)
    assert non_white > 0.03, f"the page renders nearly blank ({non_white:.1%} non-white pixels)"


def test_reports_are_valid_json_without_nan(built_digits) -> None:
    text = (built_digits.out / "report.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in report.json"))


def test_html_shows_delegation_gates_not_applied_task_metrics_and_steps(built_digits) -> None:
    page = (built_digits.out / "report.html").read_text()
    assert "<h2>Delegation</h2>" in page and "android/dynamic-int8: every op" in page
    assert "Not applied: the metric cannot tell good from bad" in page and "range_error_max" in page
    report = copy.deepcopy(built_digits.report)
    report["recipe"]["task"] = "detection"
    v = report["variants"][1]
    v["parity"].update({"map50_agreement": 0.934, "matched_iou_mean": 0.97, "detections": 210})
    v["delegation"]["by_op"]["HARD_SWISH"] = {"xnnpack": 0, "reference": 3}
    v["delegation"]["per_op"].append({"index": 99, "op": "HARD_SWISH", "tensor": "Block_3/act", "kernel": "reference",
                                      "partition": None})  # fmt: skip
    v["parity"]["streaming"] = {
        "per_step": [{"step": t, "max_abs_error": 0.01 * (t + 1)} for t in range(12)],
        "last_step": {"max_abs_error": 0.12},
    }
    page = render_html(report)
    assert "mAP@0.5 vs original" in page and "0.934" in page
    assert "HARD_SWISH ×3" in page and "Block_3/act" in page
    assert 'aria-label="worst absolute error per step' in page and "<polyline" in page


def test_a_constant_reference_output_is_reported_as_unable_to_judge_parity() -> None:
    """A head a ReLU zeroes everywhere "matches" any export that also outputs zeros (the coverage zoo's DPT
    depth head did, at random init): the report says parity against it means nothing."""
    import numpy as np

    from mobex.validate.report import reference_output_checks

    varying, constant = np.arange(6, dtype=np.float32).reshape(3, 2), np.zeros((3, 4, 4), np.float32)
    checks = reference_output_checks(["logits", "depth"], [varying, constant])
    assert [(c.name, c.passed) for c in checks] == [("reference output logits varies", True),
                                                   ("reference output depth varies", False)]  # fmt: skip
    assert checks[1].detail.startswith("every value is 0 on all 3 samples: parity against it cannot tell")
