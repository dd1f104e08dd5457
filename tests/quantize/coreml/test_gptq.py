"""Calibrated Core ML weight compression (GPTQ rounding + bias correction) on a CNN whose depthwise layer has
the weights that make round-to-nearest int8 lossy: large BatchNorm-folded kernels that nearly cancel, on
positive inputs. Same format, same size, lower error than coremltools' own rounding."""

from __future__ import annotations

from pathlib import Path

import coremltools as ct
import numpy as np
import pytest
import torch
from torch import nn

from mobex.converters.coreml import CoreMLMetadata, convert_coreml
from mobex.errors import UsageError
from mobex.quantize.coreml.compress import constexpr_op_counts
from mobex.runtime.mil.interpreter import MilReferenceRunner
from mobex.targets.coreml import compress_variant as compress_coreml
from tests.conftest import SAMPLES
from tests.quantize.edgenet import edgenet_and_digits

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def edgenet(tmp_path_factory: pytest.TempPathFactory):
    model, x, calib, val = edgenet_and_digits()
    base = convert_coreml(
        model, {"image": torch.from_numpy(x[:1])}, tmp_path_factory.mktemp("edgenet") / "edge.mlpackage",
        precision="fp16", deployment_target="iOS17", metadata=CoreMLMetadata(name="edge", version="1.0.0"),
    )  # fmt: skip
    reference = np.concatenate([MilReferenceRunner(base.path).run(f)[0] for f in val])
    return base, calib, val, reference


def snr_db(package: Path, val: list[dict], reference: np.ndarray) -> float:
    runner = MilReferenceRunner(package)
    out = np.concatenate([runner.run(f)[0] for f in val])
    return float(10 * np.log10((reference**2).sum() / ((out - reference) ** 2).sum()))


@pytest.mark.parametrize("variant", ["int8-weights", "palettize-4bit"])
def test_calibrated_weights_beat_round_to_nearest_in_the_same_format(edgenet, tmp_path: Path, variant: str) -> None:
    base, calib, val, reference = edgenet
    plain = compress_coreml(base, variant, tmp_path / "plain.mlpackage", deployment_target="iOS17")
    tuned = compress_coreml(base, variant, tmp_path / "tuned.mlpackage", deployment_target="iOS17", calibration=calib)

    assert any("no calibration data" in n for n in plain.notes)
    assert any("calibrated rounding (GPTQ)" in n and "bias correction of 4 op(s)" in n for n in tuned.notes), (
        tuned.notes
    )
    assert constexpr_op_counts(tuned.path) == constexpr_op_counts(plain.path)  # same compressed ops
    # same storage, plus the rewritten bias constants' blob headers (a few % of this 10 kB toy, 0.2 % of a real CNN)
    assert abs(tuned.size_bytes - plain.size_bytes) <= 0.05 * plain.size_bytes
    gain = snr_db(tuned.path, val, reference) - snr_db(plain.path, val, reference)  # on data calibration never saw
    assert gain > 3.0, gain


def test_calibrated_int8_levels_stay_on_coremltools_grid(edgenet, tmp_path: Path) -> None:
    """Only the stored integers change: the scales are coremltools' own and every weight is a level of them."""
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    base, calib, _, _ = edgenet
    plain = compress_coreml(base, "int8-weights", tmp_path / "plain.mlpackage", deployment_target="iOS17")
    tuned = compress_coreml(
        base, "int8-weights", tmp_path / "tuned.mlpackage", deployment_target="iOS17", calibration=calib
    )

    def quantized(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        spec = ct.utils.load_spec(str(path))
        prog = milproto_load(spec, spec.specificationVersion, str(path / "Data/com.apple.CoreML/weights"))
        out = {}
        for op in prog.functions["main"].operations:
            if op.op_type in ("conv", "linear") and op.weight.op.op_type == "constexpr_affine_dequantize":
                producer = op.weight.op
                out[op.name] = (np.asarray(producer.quantized_data.val), np.asarray(producer.scale.val))
        return out

    before, after = quantized(plain.path), quantized(tuned.path)
    assert before.keys() == after.keys() and len(before) == 4
    changed = 0
    for name, (q0, s0) in before.items():
        q1, s1 = after[name]
        np.testing.assert_array_equal(s0, s1)
        assert q1.dtype == q0.dtype == np.int8 and np.abs(q1.astype(int)).max() <= 127
        changed += int((q0 != q1).any())
    assert changed >= 1


@pytest.mark.slow
def test_efficientnet_lite0_int8_weights_keep_97_percent(tmp_path: Path) -> None:
    """The real pretrained CNN (run sample_models/efficientnet_lite0/prepare.py first); about 1.5 minutes.

    coremltools' round-to-nearest int8 weights keep 85.5 % top-1 agreement with the float model on the
    validation crops; the calibrated rounding keeps >= 97 %."""
    from mobex.data import example_inputs, load_validation_and_calibration
    from mobex.metrics.parity import parity_summary
    from mobex.recipe import load_recipe
    from mobex.runtime.torch_model import TorchRunner
    from mobex.sources import load_model

    folder = SAMPLES / "efficientnet_lite0"
    if not (folder / "weights.safetensors").exists():
        pytest.skip("run sample_models/efficientnet_lite0/prepare.py to fetch the weights and make the data")
    recipe = load_recipe(folder / "recipe.toml")
    validation, calibration = load_validation_and_calibration(recipe)
    model = load_model(recipe)
    base = convert_coreml(
        model, example_inputs(recipe, validation), tmp_path / "fp16.mlpackage", precision="fp16",
        deployment_target="iOS17", metadata=CoreMLMetadata(name="effnet", version="1.0.0"),
    )  # fmt: skip
    feeds = list(calibration.feeds())
    q = compress_coreml(base, "int8-weights", tmp_path / "w8.mlpackage", deployment_target="iOS17", calibration=feeds)
    assert q.size_bytes <= 0.55 * base.size_bytes
    val = list(validation.feeds())[::2]  # 128 crops keep the test short
    want = np.concatenate([TorchRunner(model, ["image"]).run(f)[0] for f in val])
    runner = MilReferenceRunner(q.path)
    got = np.concatenate([runner.run(f)[0] for f in val])
    parity = parity_summary(["logits"], [want], [got], task="classification", labels=None, num_classes=None)
    assert parity["top1_agreement"] >= 0.97, parity
    assert parity["snr_db"] >= 28.0, parity


def test_int4_weights_stay_int4(tmp_path: Path) -> None:
    """Sub-byte data rewritten by GPTQ keeps coremltools' int4 type and range (not widened to int8)."""
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load
    from coremltools.converters.mil.mil import types

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 16)).eval()
    base = convert_coreml(
        model, {"features": torch.randn(1, 128)}, tmp_path / "base.mlpackage", precision="fp16",
        deployment_target="iOS18", metadata=CoreMLMetadata(name="w", version="1.0.0"),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    calib = [{"features": rng.normal(size=(1, 128)).astype(np.float32)} for _ in range(300)]
    plain = compress_coreml(base, "int4-weights", tmp_path / "p.mlpackage", deployment_target="iOS18")
    tuned = compress_coreml(
        base, "int4-weights", tmp_path / "t.mlpackage", deployment_target="iOS18", calibration=calib,
        max_calibration_samples=300,
    )  # fmt: skip
    assert any("GPTQ) of 1 weight tensor" in n for n in tuned.notes), tuned.notes  # 300 rows: enough for 128 inputs
    assert abs(tuned.size_bytes - plain.size_bytes) <= 0.02 * plain.size_bytes
    spec = ct.utils.load_spec(str(tuned.path))
    prog = milproto_load(spec, spec.specificationVersion, str(tuned.path / "Data/com.apple.CoreML/weights"))
    data = [op.data for op in prog.functions["main"].operations if op.op_type == "constexpr_blockwise_shift_scale"]
    assert len(data) == 2
    for var in data:
        assert var.dtype == types.int4 and -7 <= int(np.min(var.val)) and int(np.max(var.val)) <= 7


def test_nearest_weight_rounding_keeps_coremltools_weights_even_with_calibration(edgenet, tmp_path: Path) -> None:
    """`[quantization] weight_rounding = "nearest"`: the calibration data no longer changes the stored weights."""
    from mobex.files import sha256_file

    base, calib, _, _ = edgenet
    plain = compress_coreml(base, "int8-weights", tmp_path / "plain.mlpackage", deployment_target="iOS17")
    nearest = compress_coreml(
        base, "int8-weights", tmp_path / "nearest.mlpackage", deployment_target="iOS17", calibration=calib,
        weight_rounding="nearest",
    )  # fmt: skip
    blob = "Data/com.apple.CoreML/weights/weight.bin"
    assert sha256_file(nearest.path / blob) == sha256_file(plain.path / blob)
    assert any('weight_rounding = "nearest"' in n for n in nearest.notes), nearest.notes
    with pytest.raises(UsageError, match="weight_rounding"):
        compress_coreml(
            base, "int8-weights", tmp_path / "bad.mlpackage", deployment_target="iOS17", weight_rounding="adaround"
        )
    assert not (tmp_path / "bad.mlpackage").exists()
