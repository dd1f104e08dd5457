"""Core ML detection models as Vision expects them (mobex.converters.coreml_detection): the confidence /
coordinates layout, the NonMaximumSuppression pipeline read back from the package spec, the MIL interpreter's
NMS stage (mobex.runtime.mil.detection_io) against the original model's outputs, and one real build.

Core ML's own predict (and Vision) cannot run on Linux: the pipeline is checked by its spec and by mobex's
numpy NMS stage, written from the NonMaximumSuppression spec."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mobex.errors import UsageError
from mobex.metrics.detection import DecodeOptions, decode
from mobex.metrics.vision_detection import VisionDetectionView
from mobex.runtime.mil.detection_io import non_maximum_suppression

# --------------------------------------------------------------------------- the NMS stage, to the spec


def _nms(conf, coords, **kw):
    args = {"iou_threshold": 0.5, "confidence_threshold": 0.3, "per_class": True, "max_boxes": None} | kw
    return non_maximum_suppression(np.array(conf, float), np.array(coords, float), **args)


def test_nms_per_class_keeps_overlapping_boxes_of_different_labels_and_agnostic_does_not() -> None:
    coords = [[0.5, 0.5, 0.2, 0.2], [0.51, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1]]
    conf = [[0.9, 0.05], [0.1, 0.8], [0.7, 0.2], [0.2, 0.1]]  # the last scores below the threshold
    kept, boxes = _nms(conf, coords)
    np.testing.assert_allclose(kept, np.array(conf, np.float32)[[0, 1, 2]])  # whole confidence rows, best first
    np.testing.assert_allclose(boxes, np.array(coords, np.float32)[[0, 1, 2]])
    kept, _ = _nms(conf, coords, per_class=False)  # the second box overlaps the first (IoU 0.9): suppressed
    np.testing.assert_allclose(kept, np.array(conf, np.float32)[[0, 2]])
    assert _nms(conf, coords, max_boxes=1)[0].shape == (1, 2)
    assert _nms(conf, coords, iou_threshold=1.0, per_class=False)[0].shape == (3, 2)  # 1.0: no suppression
    assert _nms(conf, coords, confidence_threshold=0.95)[0].shape == (0, 2)


def test_the_view_maps_the_recipe_layout_to_vision_and_back_to_the_same_detections() -> None:
    """softmax scores with a background class 0 and xyxy boxes in pixels of a 40x20 picture."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (3, 10, 3))
    xy = rng.uniform(0, 30, (3, 10, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 10, (3, 10, 2))], axis=-1)
    layout = {"score_activation": "softmax", "background_class": 0, "box_format": "xyxy", "box_units": "pixels",
              "width": 40, "height": 20}  # fmt: skip
    view = VisionDetectionView(layout)
    conf, coords = view.vision_outputs(logits, boxes)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(conf, probs[..., 1:], rtol=1e-6)
    np.testing.assert_allclose(coords[..., 0], (boxes[..., 0] + boxes[..., 2]) / 2 / 40, rtol=1e-6)
    np.testing.assert_allclose(coords[..., 3], (boxes[..., 3] - boxes[..., 1]) / 20, rtol=1e-6)
    recipe = DecodeOptions("xyxy", 0.3, 0.5, 100, "softmax", 0)
    vision = DecodeOptions("cxcywh", 0.3, 0.5, 100, "none", None)
    ours, theirs = decode(logits, boxes, recipe), decode(conf, coords, vision)
    assert sum(len(d) for d in ours) > 0
    for a, b in zip(ours, theirs, strict=True):  # the same detections, classes renumbered without background
        np.testing.assert_array_equal(a.classes - 1, b.classes)
        np.testing.assert_allclose(a.boxes / [40, 20, 40, 20], b.boxes, atol=1e-6)
    labels = np.array([[[0, 1, 1, 5, 5], [2, 0, 0, 20, 10], [-1, 0, 0, 0, 0]]], float)
    mapped = view.vision_labels(labels)
    np.testing.assert_allclose(mapped[0, :, 0], [-1, 1, -1])  # background rows drop out, classes shift down
    np.testing.assert_allclose(mapped[0, 1, 1:], [0.25, 0.25, 0.5, 0.5])


# --------------------------------------------------------------------------- refused configurations


def test_recipe_refuses_nms_without_the_vision_layout_and_vision_options_for_other_tasks(tmp_path: Path) -> None:
    from mobex.recipe import load_recipe
    from tests.task_projects import recipe_text

    def recipe(model: str, ios: str, tables: str = "") -> Path:
        text = recipe_text("d", [("image", [1, 1, 8, 8], "float32")], model=model, outputs=("scores", "boxes"),
                           tables=tables, android=None, ios='["fp16"]')  # fmt: skip
        path = tmp_path / "recipe.toml"
        path.write_text(text.replace('variants = ["fp16"]\n', 'variants = ["fp16"]\n' + ios + "\n"))
        (tmp_path / "val.npz").write_bytes(b"")
        return path

    table = '[detection]\nscores = "scores"\nboxes = "boxes"\n'
    with pytest.raises(Exception, match="nms = true needs the Vision layout"):
        load_recipe(recipe('task = "detection"', 'detection_layout = "raw"\nnms = true', table))
    with pytest.raises(Exception, match='are for task = "detection"'):
        load_recipe(recipe('task = "regression"', 'detection_layout = "vision"'))


def test_pixel_boxes_without_an_image_input_are_refused_when_the_vision_layout_is_asked_for() -> None:
    from mobex.converters.coreml_detection import DetectionOptions, plan_detection

    example = {"image": torch.zeros(1, 1, 32, 32)}
    outputs = [torch.zeros(1, 64), torch.zeros(1, 64, 4)]
    asked = DetectionOptions("scores", "boxes", "cxcywh", layout="vision")
    with pytest.raises(UsageError, match="no Core ML image input"):
        plan_detection(asked, example, ["scores", "boxes"], outputs, image_input=None, labels=None)
    # unset, the layout falls back to the recipe's outputs instead of failing the build
    assert plan_detection(DetectionOptions("scores", "boxes"), example, ["scores", "boxes"], outputs,
                          image_input=None, labels=None) is None  # fmt: skip
    normalized = DetectionOptions("scores", "boxes", "cxcywh", "normalized", layout="vision", nms=False)
    plan = plan_detection(normalized, example, ["scores", "boxes"], outputs, image_input=None, labels=None)
    assert plan is not None and plan.nms is None and plan.labels == ["class_0"]
    with pytest.raises(UsageError, match="3 labels for a detector with 1 score classes"):
        plan_detection(normalized, example, ["scores", "boxes"], outputs, image_input=None, labels=["a", "b", "c"])


# --------------------------------------------------------------------------- a converted pipeline


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    """The squares detector (random weights, softmax over background + 2 classes) converted with an image input
    and wrapped in the NMS pipeline, as `mobex build` does."""
    from mobex.converters.coreml import CoreMLMetadata, convert_coreml, wrap_nms
    from mobex.converters.coreml_detection import DetectionOptions, nms_layout
    from mobex.preprocessing import parse_preprocessing

    class ThreeClass(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, stride=4, padding=1), torch.nn.ReLU())
            self.score = torch.nn.Conv2d(8, 3, 1)
            self.box = torch.nn.Conv2d(8, 4, 1)
            self.register_buffer("anchors", torch.rand(1, 64, 2, generator=torch.Generator().manual_seed(0)) * 28)

        def forward(self, image: torch.Tensor):
            h = self.body(image)
            scores = self.score(h).flatten(2).transpose(1, 2) * 4  # [N, 64, 3], confident
            raw = self.box(h).flatten(2).transpose(1, 2)
            xy = self.anchors + torch.sigmoid(raw[..., :2])
            wh = 4 + 4 * torch.sigmoid(raw[..., 2:])
            return scores, torch.cat([xy, xy + wh], -1)  # xyxy, pixels

    torch.manual_seed(0)
    model = ThreeClass().eval()
    folder = tmp_path_factory.mktemp("pipeline")
    contract = parse_preprocessing({"kind": "image", "scale": 255.0, "color": "L"})
    options = DetectionOptions("scores", "boxes", "xyxy", "pixels", "softmax", 0, 0.4, 0.45, 20)
    meta = CoreMLMetadata(name="three", version="1.0.0", preprocessing=contract, task="detection",
                          labels=["background", "square", "disk"], detection=options)  # fmt: skip
    pixels = np.random.default_rng(2).integers(0, 256, (6, 1, 32, 32)).astype(np.uint8)
    floats = (pixels / 255.0).astype(np.float32)
    program = convert_coreml(model, {"image": torch.from_numpy(floats[:1])}, folder / "Three-program.mlpackage",
                             precision="fp32", output_names=["scores", "boxes"], metadata=meta)  # fmt: skip
    layout = nms_layout(program.path)
    wrap_nms(program.path, folder / "Three.mlpackage", layout)
    with torch.no_grad():
        scores, boxes = model(torch.from_numpy(floats))
    return folder / "Three.mlpackage", program, pixels, floats, scores.numpy(), boxes.numpy()


def test_the_pipeline_spec_reads_back_as_vision_expects(pipeline) -> None:
    import coremltools as ct

    from mobex.converters.coreml import read_interface, read_io

    path, program, *_ = pipeline
    spec = ct.utils.load_spec(str(path))
    assert spec.WhichOneof("Type") == "pipeline"
    assert [m.WhichOneof("Type") for m in spec.pipeline.models] == ["mlProgram", "nonMaximumSuppression"]
    assert [o.name for o in spec.description.output] == ["confidence", "coordinates"]
    inputs = {f.name: f for f in spec.description.input}
    assert inputs["image"].type.WhichOneof("Type") == "imageType"
    assert all(inputs[n].type.isOptional and inputs[n].type.WhichOneof("Type") == "doubleType"
               for n in ("iouThreshold", "confidenceThreshold"))  # fmt: skip
    nms = spec.pipeline.models[1].nonMaximumSuppression
    assert (nms.iouThreshold, nms.confidenceThreshold, nms.pickTop.perClass) == (0.45, 0.4, True)
    assert list(nms.stringClassLabels.vector) == ["square", "disk"]  # the background's label left out
    assert (nms.iouThresholdInputFeatureName, nms.confidenceThresholdInputFeatureName) == (
        "iouThreshold", "confidenceThreshold")  # fmt: skip
    ranges = spec.description.output[0].type.multiArrayType.shapeRange.sizeRanges
    assert [(r.lowerBound, r.upperBound) for r in ranges] == [(0, 20), (2, 2)]  # at most max_detections boxes
    assert [o.shape for o in program.outputs] == [(64, 2), (64, 4)]  # the program stage: [boxes, classes]
    _, outputs = read_io(path)
    assert [(o.name, o.shape) for o in outputs] == [("confidence", (-1, 2)), ("coordinates", (-1, 4))]
    detection = read_interface(path)["detection"]
    assert detection["classes"] == ["square", "disk"] and detection["background_class_dropped"] == 0
    assert detection["nms"]["max_boxes"] == 20 and "VNRecognizedObjectObservation" in detection["vision_returns"]
    assert "VNCoreMLFeatureValueObservation" in read_interface(program.path)["detection"]["vision_returns"]


def test_the_interpreter_runs_the_pipeline_and_matches_the_originals_detections(pipeline) -> None:
    from mobex.runtime.mil.interpreter import MilReferenceRunner

    path, _, pixels, floats, scores, boxes = pipeline
    runner = MilReferenceRunner(path)
    view = VisionDetectionView(runner.detection.layout, runner.detection.nms.record())
    conf_ref, coords_ref = view.vision_outputs(scores, boxes)
    found = 0
    for i in range(len(pixels)):
        native = runner.run_native({"image": pixels[i : i + 1]})
        conf, coords = native["confidence"], native["coordinates"]
        want_conf, want_coords = non_maximum_suppression(
            conf_ref[i], coords_ref[i], iou_threshold=0.45, confidence_threshold=0.4, per_class=True, max_boxes=20
        )
        assert conf.shape == want_conf.shape and conf.shape[0] <= 20
        np.testing.assert_allclose(conf, want_conf, atol=1e-4)
        np.testing.assert_allclose(coords, want_coords, atol=1e-4)
        assert np.all((coords[:, :2] >= 0) & (coords[:, :2] <= 1.2))  # normalized, not pixels
        found += conf.shape[0]
        # the overridable threshold input changes what the NMS stage keeps
        fewer = runner.run_native({"image": pixels[i : i + 1], "confidenceThreshold": np.float64(0.8)})
        assert fewer["confidence"].shape[0] <= conf.shape[0]
        assert np.all(fewer["confidence"].max(axis=1) >= 0.8)
    assert found > 10
    # the validator's form: program outputs and the padded NMS rows, compared by the view's metrics
    outs = [np.concatenate(o) for o in zip(*(runner.run({"image": floats[i : i + 1]}) for i in range(6)), strict=True)]
    assert [o.shape for o in outs] == [(6, 64, 2), (6, 64, 4), (6, 20, 2), (6, 20, 4)]
    from mobex.metrics.tasks import TaskSpec

    decoding = DecodeOptions("xyxy", 0.4, 0.45, 20, "softmax", 0)
    spec = TaskSpec("detection", ("scores", "boxes"), detection=(0, 1, decoding))
    evaluation = view.evaluate(spec, [scores, boxes], outs, None)
    p = evaluation.parity
    assert p["map50_agreement"] == pytest.approx(1.0) and p["matched_iou_mean"] > 0.999
    assert p["detections"] == p["detections_reference"] == found and p["score_error_max"] < 1e-4
    assert p["program_detections"]["map50_agreement"] == pytest.approx(1.0) and p["max_abs_error"] < 1e-4
    assert [o["name"] for o in p["outputs"]] == ["confidence", "coordinates"]
    # a wrong reading fails: the original's boxes left in pixels do not match the normalized coordinates
    bad = VisionDetectionView({**view.layout, "box_units": "normalized"}, view.nms)
    assert bad.evaluate(spec, [scores, boxes], outs, None).parity["map50_agreement"] < 0.5


# --------------------------------------------------------------------------- one real build


@pytest.mark.slow
def test_build_ships_a_verified_ios_bundle_with_the_vision_layout(tmp_path: Path) -> None:
    from mobex.bundle.keys import generate_keypair
    from mobex.bundle.verify import verify_bundle
    from mobex.pipeline import BuildOptions, build
    from mobex.recipe import load_recipe
    from tests.task_projects import detection

    private, public = generate_keypair(tmp_path / "key.pem")
    folder = tmp_path / "project"
    folder.mkdir()
    recipe = load_recipe(detection(folder, vision="nms = true"))
    out = tmp_path / "out"
    build(recipe, BuildOptions(out_dir=out, key=private, jobs=2, source_date_epoch=1_700_000_000))
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "passed", [(v["id"], v["status"]) for v in report["variants"]]
    by_id = {v["id"]: v for v in report["variants"]}
    for vid in ("ios/fp16", "ios/int8-weights"):
        p = by_id[vid]["parity"]
        assert by_id[vid]["backend"] == "mil-reference" and p["detection_layout"] == "vision"
        assert p["map50_agreement"] >= 0.98 and p["matched_iou_mean"] > 0.98 and p["nms"]["per_class"] is True
        assert p["detections"] > 50 and p["map50"] == pytest.approx(report["reference"]["metrics"]["map50"], abs=0.02)
        assert any("Core ML's own predict and Vision do not run here" in n for n in by_id[vid]["notes"])
    (bundle,) = out.glob("*-ios.zip")
    manifest = verify_bundle(bundle, public)
    detection_entry = manifest.model["detection"]
    assert detection_entry["layout"] == "vision" and detection_entry["nms"]["iou_threshold"] == 0.4
    assert detection_entry["classes"] == ["class_0"]
    assert [o["name"] for o in manifest.model["outputs"]] == ["confidence", "coordinates"]
    with zipfile.ZipFile(bundle) as z:
        names = z.namelist()
    assert any(n.endswith("model.mlmodel") and n.startswith("model/Squares.mlpackage/") for n in names)
