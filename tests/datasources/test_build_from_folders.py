"""Builds from data as app developers hold it (no .npz anywhere), and the app-side contract they ship.

- An image classifier from a folder of real photos (JPEG/PNG/WebP crops of scikit-learn's sample
  pictures): the Core ML package has an image input and classifier outputs (read from its spec), the
  .tflite carries the recipe's tensor names and metadata with labels and normalisation (read back), and
  pictures put through the manifest's preprocessing steps, re-implemented here from docs/preprocessing.md
  (not with mobex's code), give the arrays and outputs mobex validated.
- An audio classifier from WAV/FLAC files, and a tabular model from a CSV.
"""

from __future__ import annotations

import io
import json
import os
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mobex.bundle.keys import generate_keypair
from mobex.pipeline import BuildOptions, build
from mobex.recipe import load_recipe
from tests.datasources.conftest import IMAGE_RECIPE, TINY_CNN, write_photos, write_tones, write_wine_csv
from tests.datasources.test_audio import AUDIO_RECIPE
from tests.datasources.test_tables import tabular_recipe

pytestmark = pytest.mark.slow

PLATFORMS = {
    "image": '[android]\nvariants = ["fp32", "dynamic-int8"]\n\n[ios]\nvariants = ["fp16", "int8-weights"]\n',
    "other": '[android]\nvariants = ["fp32"]\n\n[ios]\nvariants = ["fp32"]\n',
}


def _build(folder: Path, recipe_text: str, labels: list[str], platforms: str) -> tuple[Path, object]:
    (folder / "model.py").write_text(TINY_CNN)
    (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    text = textwrap.dedent(recipe_text).replace('[android]\nvariants = ["fp32"]\n', platforms)
    (folder / "recipe.toml").write_text(
        text.replace("[data]\n", "[data]\nmin_calibration_samples = 4\n", 1)
        if "min_calibration_samples" not in text
        else text
    )
    assert not list(folder.rglob("*.npz")), "the data is as app developers hold it: no .npz"
    key, _ = generate_keypair(folder / "keys" / "release.pem")
    out = folder / "dist"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOBEX_CACHE_DIR", str(folder / "cache"))
        result = build(load_recipe(folder / "recipe.toml"), BuildOptions(out_dir=out, key=key, jobs=2))
    assert not list(folder.glob("*.npz")) and not list((folder / "dist").rglob("*.npz"))
    return out, result


def _bundle(out: Path, platform: str) -> zipfile.ZipFile:
    (path,) = out.glob(f"*-{platform}.zip")
    return zipfile.ZipFile(path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("photo-app")
    write_photos(folder / "photos", per_class=6)
    out, result = _build(folder, IMAGE_RECIPE, ["china", "flower"], PLATFORMS["image"])
    return folder, out, result


def test_the_photo_classifier_builds_and_ships_both_platforms(photos) -> None:
    _, out, result = photos
    assert result.passed, result.report["failures"]
    report = json.loads((out / "report.json").read_text())
    statuses = {v["id"]: v["status"] for v in report["variants"]}
    assert statuses == {
        k: "validated" for k in ("android/fp32", "android/dynamic-int8", "ios/fp16", "ios/int8-weights")
    }
    checks = {c["name"]: c for c in report["data_checks"]}
    assert "12 of 12 pictures decoded with Pillow" in checks["validation.decoded"]["detail"]


def test_the_core_ml_package_has_an_image_input_and_classifier_outputs(photos, tmp_path: Path) -> None:
    import coremltools as ct

    _, out, _ = photos
    with _bundle(out, "ios") as z:
        z.extractall(tmp_path)
        manifest = json.loads(z.read("manifest.json"))
    package = tmp_path / manifest["model"]["path"]
    spec = ct.utils.load_spec(str(package))
    (image,) = spec.description.input
    assert image.type.WhichOneof("Type") == "imageType"
    assert (image.type.imageType.width, image.type.imageType.height) == (64, 64)
    assert ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.type.imageType.colorSpace) == "RGB"
    assert spec.description.predictedFeatureName == "classLabel"
    assert spec.description.predictedProbabilitiesName == "classLabel_probs"
    kinds = {o.name: o.type.WhichOneof("Type") for o in spec.description.output}
    assert kinds == {"classLabel": "stringType", "classLabel_probs": "dictionaryType"}
    from mobex.runtime.mil.program import load_pymil_program

    prog, _, _ = load_pymil_program(package)
    op = next(o for o in prog.functions["main"].operations if o.op_type == "classify")
    assert [str(c) for c in op.inputs["classes"].val] == ["china", "flower"]
    assert manifest["model"]["image_inputs"]["image"]["color_space"] == "RGB"
    assert manifest["model"]["classifier"] == {"label_output": "classLabel", "scores_output": "classLabel_probs"}


def test_the_tflite_carries_the_recipe_names_and_metadata(photos) -> None:
    from mobex.converters.tflite_metadata import read_metadata
    from mobex.converters.tflite_names import io_tensor_names

    folder, out, _ = photos
    with _bundle(out, "android") as z:
        manifest = json.loads(z.read("manifest.json"))
        model = z.read(manifest["model"]["path"])
    assert io_tensor_names(model) == (["image"], ["logits"])
    meta = read_metadata(model)
    assert meta["name"] == "photo-cnn" and meta["version"] == "1.0.0"
    (inp,) = meta["inputs"]
    assert inp["content"] == {"image": {"color_space": "RGB"}}
    np.testing.assert_allclose(inp["normalization"]["mean"], np.array([0.485, 0.456, 0.406]) * 255, rtol=1e-6)
    np.testing.assert_allclose(inp["normalization"]["std"], np.array([0.229, 0.224, 0.225]) * 255, rtol=1e-6)
    (outp,) = meta["outputs"]
    assert outp["associated_files"] == [{"name": "labels.txt", "type": "TENSOR_AXIS_LABELS"}]
    assert meta["files"] == {"labels.txt": b"china\nflower\n"}
    # The file is also a zip holding the labels, as the Task Library expects.
    with zipfile.ZipFile(io.BytesIO(model)) as packed:
        assert packed.read("labels.txt") == b"china\nflower\n"


def _app_side_pixels(path: Path, contract: dict) -> np.ndarray:
    """docs/preprocessing.md, re-implemented: decode RGB, shorter side to `resize`, centre `crop`. uint8 HWC."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        n = contract["resize"]
        size = (n, int(n * h / w)) if w <= h else (int(n * w / h), n)
        im = im.resize(size, Image.Resampling.BILINEAR)
        c = contract["crop"]
        top, left = int(round((im.size[1] - c) / 2.0)), int(round((im.size[0] - c) / 2.0))
        return np.asarray(im.crop((left, top, left + c, top + c)), dtype=np.uint8)


def _app_side_tensor(pixels: np.ndarray, contract: dict) -> np.ndarray:
    x = (pixels.astype(np.float64) / contract["scale"] - np.array(contract["mean"])) / np.array(contract["std"])
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def test_pictures_through_the_manifest_steps_give_the_validated_outputs(photos, tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from mobex.data import load_dataset
    from mobex.runtime.mil.interpreter import MilReferenceRunner

    folder, out, _ = photos
    with _bundle(out, "android") as z:
        manifest = json.loads(z.read("manifest.json"))
        tflite = z.read(manifest["model"]["path"])
    contract = manifest["preprocessing"]
    assert (contract["kind"], contract["resize"], contract["crop"], contract["layout"]) == ("image", 72, 64, "NCHW")
    files = sorted((folder / "photos").glob("*/*"))
    pixels = [_app_side_pixels(f, contract) for f in files]
    app = np.concatenate([_app_side_tensor(p, contract) for p in pixels])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOBEX_CACHE_DIR", str(folder / "cache"))
        validated = load_dataset(load_recipe(folder / "recipe.toml"), "validation", Path("photos")).arrays["image"]
    np.testing.assert_allclose(app, validated, atol=1e-6)  # the same inputs mobex validated on

    interpreter = Interpreter(model_content=tflite)
    run = interpreter.get_signature_runner()
    on_app = np.concatenate([run(image=x[None])["logits"] for x in app])
    on_validated = np.concatenate([run(image=x[None])["logits"] for x in validated])
    np.testing.assert_allclose(on_app, on_validated, atol=1e-5)

    # iOS: the app hands Core ML the cropped picture itself; the package's ImageType does scale and bias.
    with _bundle(out, "ios") as z:
        z.extractall(tmp_path)
        package = tmp_path / json.loads(z.read("manifest.json"))["model"]["path"]
    runner = MilReferenceRunner(package)
    for p, x in zip(pixels, validated, strict=True):
        native = runner.run_native({"image": p[None]})
        (scores,) = runner.run({"image": x[None]})  # mobex's float feed, the form validation used
        np.testing.assert_allclose(list(native["classLabel_probs"].values()), scores[0], atol=2e-3)
        assert native["classLabel"] == ["china", "flower"][int(np.argmax(scores))]


def test_an_audio_classifier_from_wav_and_flac_files(tmp_path: Path) -> None:
    from mobex.converters.tflite_metadata import read_metadata

    write_tones(tmp_path / "tones")
    out, result = _build(tmp_path, AUDIO_RECIPE, ["low", "high"], PLATFORMS["other"])
    assert result.passed, result.report["failures"]
    with _bundle(out, "android") as z:
        manifest = json.loads(z.read("manifest.json"))
        meta = read_metadata(z.read(manifest["model"]["path"]))
    assert manifest["preprocessing"]["kind"] == "audio" and manifest["preprocessing"]["hop"] == 400
    assert meta["inputs"][0]["content"] == {"audio": {"sample_rate": 8000, "channels": 1}}
    assert meta["files"] == {"labels.txt": b"low\nhigh\n"}


def test_a_tabular_model_from_a_csv(tmp_path: Path) -> None:
    _, names, classes = write_wine_csv(tmp_path / "wine.csv")
    # a tabular classifier is an MLClassifier only when asked (the default is for image classifiers)
    platforms = PLATFORMS["other"].replace("[ios]\n", "[ios]\nclassifier = true\n", 1)
    assert platforms != PLATFORMS["other"]
    out, result = _build(tmp_path, tabular_recipe(names), classes, platforms)
    assert result.passed, result.report["failures"]
    report = json.loads((out / "report.json").read_text())
    assert {v["id"]: v["status"] for v in report["variants"]} == {"android/fp32": "validated", "ios/fp32": "validated"}
    with _bundle(out, "ios") as z:
        manifest = json.loads(z.read("manifest.json"))
    assert manifest["preprocessing"]["feature_names"] == names
    assert manifest["model"]["classifier"]["label_output"] == "classLabel"
    assert os.path.basename(manifest["model"]["path"]).endswith(".mlpackage")
