"""Every task kind through `mobex build`: task metrics and gates per variant, in the real runtimes.

The projects (tests/task_projects.py) are small trained models: a multi-head digits classifier (class scores,
an ink box, a one-value probability), a square detector, a shape segmenter, a digits embedding over int64
pixel tokens with a bool mask, a row-by-row streaming digits reader with a fed-back state, and a hard-swish CNN
whose int8 runs on LiteRT's reference kernels. Each build takes tens of seconds: all are marked slow; the
metric functions, the ship rule and the data checks have fast tests of their own.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from mobex.pipeline import BuildOptions, build
from mobex.recipe import load_recipe
from tests.task_projects import PROJECTS

pytestmark = pytest.mark.slow


def _build(kind: str, folder: Path) -> tuple[dict, Path]:
    recipe = load_recipe(PROJECTS[kind](folder))
    out = folder / "out"
    build(recipe, BuildOptions(out_dir=out, jobs=2, source_date_epoch=1_700_000_000))
    return json.loads((out / "report.json").read_text()), out


def _manifest(out: Path, platform: str) -> dict:
    (bundle,) = out.glob(f"*-{platform}.zip")
    with zipfile.ZipFile(bundle) as z:
        return json.loads(z.read("manifest.json"))


def _by_id(report: dict) -> dict[str, dict]:
    return {v["id"]: v for v in report["variants"]}


def test_multi_head_classifier_small_outputs_and_the_same_outputs_on_both_platforms(tmp_path: Path) -> None:
    report, out = _build("multi_head", tmp_path)
    assert report["status"] == "passed"
    names = ["digit", "box", "even"]
    for v in report["variants"]:
        p = v["parity"]
        assert p["class_output"] == "digit" and p["top1_agreement"] >= 0.97, v["id"]
        outputs = {o["name"]: o for o in p["outputs"]}
        assert outputs["box"]["cosine_min"] is None and outputs["even"]["cosine_min"] is None  # 4 and 1 values
        assert outputs["digit"]["cosine_min"] is not None and p["cosine_min"] == outputs["digit"]["cosine_min"]
        assert p["range_error_max"] == max(outputs["box"]["range_error_max"], outputs["even"]["range_error_max"])
        gated = {g["metric"] for g in v["gates"]}
        assert "range_error_max" in gated and "cosine_min" in gated and "top1_agreement" in gated
        assert [t["name"] for t in v["outputs"]] == names, v["id"]  # the exported model's own output order
    assert report["reference"]["metrics"]["accuracy"] > 0.9  # it is a trained digits classifier
    for platform in ("android", "ios"):
        outputs = _manifest(out, platform)["model"]["outputs"]
        assert [o["name"] for o in outputs] == names
        assert [o["torch_dtype"] for o in outputs] == ["float32"] * 3
    from mobex.converters.tflite_metadata import read_metadata

    (bundle,) = out.glob("*-android.zip")
    with zipfile.ZipFile(bundle) as z:
        meta = read_metadata(z.read("model/multi-head.tflite"))
    labelled = [o["name"] for o in meta["outputs"] if o.get("associated_files")]
    assert [o["name"] for o in meta["outputs"]] == names and labelled == ["digit"]  # the labels describe class_output


def test_detection_metrics_against_the_original_and_the_labels(tmp_path: Path) -> None:
    report, _ = _build("detection", tmp_path)
    variants = _by_id(report)
    ref = report["reference"]["metrics"]
    assert ref["map50"] > 0.5  # the trained detector finds the squares
    fp32 = variants["android/fp32"]["parity"]
    assert fp32["map50_agreement"] == pytest.approx(1.0) and fp32["matched_iou_mean"] > 0.999
    assert fp32["detections"] == fp32["detections_reference"] > 50 and fp32["map50"] == pytest.approx(ref["map50"])
    for v in report["variants"]:
        gated = {g["metric"]: g for g in v["gates"]}
        assert {"map50_agreement", "matched_iou_mean", "score_error_mean"} <= set(gated), v["id"]
        assert ("map50_drop" in gated) == (v["quantization"] != "fp32")  # fp32 is held to agreement alone
        assert gated["map50_agreement"]["value"] == v["parity"]["map50_agreement"]
    int8 = variants["android/int8"]["parity"]
    assert 0 <= int8["map50_agreement"] <= 1 and int8["score_error_mean"] > fp32["score_error_mean"]


def test_segmentation_metrics(tmp_path: Path) -> None:
    report, _ = _build("segmentation", tmp_path)
    assert report["reference"]["metrics"]["miou"] > 0.6  # the trained segmenter separates square and disk
    for v in report["variants"]:
        p = v["parity"]
        assert p["segmentation_output"] == "classes" and p["classes_reference"] == 3
        assert {"pixel_agreement", "miou_agreement"} <= {g["metric"] for g in v["gates"]}
        assert p["miou_drop"] == pytest.approx(p["miou_reference"] - p["miou"])
    fp32 = _by_id(report)["android/fp32"]["parity"]
    assert fp32["pixel_agreement"] > 0.999 and fp32["miou_agreement"] > 0.99


def test_embedding_int64_ids_and_a_bool_mask_on_both_platforms(tmp_path: Path) -> None:
    report, out = _build("embedding", tmp_path)
    assert report["status"] == "passed"
    for v in report["variants"]:
        p = v["parity"]
        assert (
            p["recall_k"] == 5 and p["recall_at_k"] is not None and "recall_at_k" in {g["metric"] for g in v["gates"]}
        )
    assert _by_id(report)["android/fp32"]["parity"]["recall_at_k"] > 0.99
    assert any(c["name"] == "validation.ids.int32_range" and c["passed"] for c in report["data_checks"])
    android, ios = (_manifest(out, p)["model"]["inputs"] for p in ("android", "ios"))
    ids = {p: next(i for i in m if i["name"] == "ids") for p, m in (("android", android), ("ios", ios))}
    for entry in ids.values():  # stored as int32 on both, said so, with the range validated
        assert entry["dtype"] == "int32" and entry["torch_dtype"] == "int64" and entry["checked_range"] == [0, 16]
    masks = {p: next(i for i in m if i["name"] == "mask") for p, m in (("android", android), ("ios", ios))}
    assert masks["android"]["dtype"] == "bool" and masks["ios"]["dtype"] == "int32"  # Core ML has no bool arrays
    assert all(m["torch_dtype"] == "bool" for m in masks.values())


def test_streaming_variants_run_on_their_own_state(tmp_path: Path) -> None:
    report, _ = _build("streaming", tmp_path)
    assert report["status"] == "passed"
    for v in report["variants"]:
        s = v["parity"]["streaming"]
        assert s["state"] == [{"input": "h", "output": "h_out"}]
        assert (s["sequences"], s["steps"]) == (96, 8) and [x["step"] for x in s["per_step"]] == list(range(8))
        assert s["last_step"]["max_abs_error"] == s["per_step"][-1]["max_abs_error"]
        assert v["parity"]["samples"] == 96 * 8
    variants = _by_id(report)
    for fp32 in ("android/fp32", "ios/fp32"):
        assert variants[fp32]["parity"]["streaming"]["last_step"]["max_abs_error"] < 1e-4
    int8 = variants["android/int8"]["parity"]["streaming"]["per_step"]
    assert int8[-1]["max_abs_error"] > int8[0]["max_abs_error"]  # int8 state error compounds over the rows
    assert report["reference"]["metrics"]["accuracy"] > 0.5  # averaged over every row, the first ones included


def test_int8_slower_than_fp32_does_not_ship_and_the_report_says_why(tmp_path: Path) -> None:
    report, out = _build("hardswish", tmp_path)
    assert report["shipped"] == {"android": "fp32"}
    int8 = _by_id(report)["android/int8"]
    assert int8["passed"]  # it passes its gates: speed is what keeps it out
    deleg = int8["delegation"]
    assert deleg["partitions"] > 1 and deleg["by_op"]["HARD_SWISH"]["reference"] == 6
    assert all(op["kernel"] == "reference" for op in deleg["per_op"] if op["op"] == "HARD_SWISH")
    (line,) = [r for r in report["rejected_variants"] if r.startswith("android/int8")]
    assert "slower than android/fp32" in line and "HARD_SWISH x6" in line and line in int8["notes"]
    fp32 = _by_id(report)["android/fp32"]["delegation"]
    assert fp32["partitions"] == 1 and fp32["reference_ops"] == 0
    html = (out / "report.html").read_text()
    assert "HARD_SWISH" in html and "XNNPACK partitions" in html
