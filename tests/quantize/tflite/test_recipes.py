"""quantize_tflite: every variant on a small CNN trained on real 8x8 digits, run through LiteRT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobex.artifacts import ExportedVariant
from mobex.converters.tflite import convert_tflite
from mobex.errors import DataError, UsageError
from mobex.plugins import variants_of
from mobex.runtime.litert import TfliteRunner
from mobex.runtime.torch_model import TorchRunner
from mobex.targets.tflite import quantize_tflite

torch.set_num_threads(1)

# Upper bounds on size relative to fp32 for a weight-dominated model (the Linear(2048, 64) holds
# ~95% of the weights), and lower bounds on the worst sample's cosine similarity of the logits.
TFLITE_VARIANTS = [spec.name for spec in variants_of("tflite")]
MAX_SIZE_RATIO = {
    "fp32": 1.0,
    "fp16": 0.55,
    "dynamic-int8": 0.35,
    "int8-weights": 0.35,
    "int4-weights": 0.2,
    "int8": 0.35,
}
MIN_COSINE = {
    "fp32": 0.99999,
    "fp16": 0.9999,
    "dynamic-int8": 0.999,
    "int8-weights": 0.999,
    "int4-weights": 0.99,
    "int8": 0.99,
}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """A CNN trained for a few seconds on scikit-learn's bundled digits: realistic weights and inputs."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0 - 0.5)[:, None]  # [N, 1, 8, 8], the recipe's layout
    y = data.target
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.Hardswish(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.BatchNorm2d(16),
        nn.Hardswish(),
        nn.Conv2d(16, 32, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x[:1400]), torch.from_numpy(y[:1400])
    model.train()
    for _ in range(3):
        for i in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[i]), yt[i]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(x[1400:])).argmax(1).numpy() == y[1400:]).mean()
    assert accuracy > 0.8, accuracy  # a trained model, not noise
    return model, x[1400:1464], x[1464:1528]  # calibration split, validation split


@pytest.fixture(scope="module")
def base(digits, tmp_path_factory) -> ExportedVariant:
    model, _, _ = digits
    return convert_tflite(model, {"image": torch.zeros(1, 1, 8, 8)}, tmp_path_factory.mktemp("base") / "cnn.tflite")


def feeds(images: np.ndarray) -> list[dict[str, np.ndarray]]:
    return [{"image": img[None]} for img in images]


@pytest.mark.parametrize("variant", TFLITE_VARIANTS)
def test_variant_is_smaller_and_close_to_torch(variant: str, digits, base: ExportedVariant, tmp_path: Path) -> None:
    model, calib, val = digits
    out = tmp_path / f"cnn-{variant}.tflite"
    q = quantize_tflite(base, variant, out, calibration=feeds(calib))

    assert (q.target, q.platform, q.quantization, q.path) == ("tflite", "android", variant, out)
    assert q.size_bytes == out.stat().st_size
    assert q.size_bytes <= MAX_SIZE_RATIO[variant] * base.size_bytes, (q.size_bytes, base.size_bytes)
    # Only the model is written; static int8 says how it was made (calibration, fallback) in the variant itself.
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    assert (q.details is not None) == (variant == "int8")
    if variant == "int8":
        assert q.details["calibration"]["samples"] == len(calib) and "fallback_layers" in q.details
    # Float I/O unless asked otherwise: a drop-in replacement for the fp32 model.
    assert [(s.name, s.shape, s.dtype, s.quantization) for s in q.inputs] == [("image", (1, 1, 8, 8), "float32", None)]
    assert [(s.name, s.dtype) for s in q.outputs] == [("output_0", "float32")]

    runner, reference = TfliteRunner(q.path), TorchRunner(model, ["image"])
    got = np.concatenate([runner.run(f)[0] for f in feeds(val)])
    want = np.concatenate([reference.run(f)[0] for f in feeds(val)])
    assert got.dtype == np.float32
    similarity = cosines(got, want)
    assert similarity.min() > MIN_COSINE[variant], similarity.min()
    assert similarity.mean() > 0.99, similarity.mean()
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95


def test_static_int8_io_reports_quantization_and_runner_round_trips(digits, base, tmp_path: Path) -> None:
    _, calib, val = digits
    float_io = quantize_tflite(base, "int8", tmp_path / "float-io.tflite", calibration=feeds(calib))
    int_io = quantize_tflite(base, "int8", tmp_path / "int8-io.tflite", calibration=feeds(calib), int8_io=True)

    (inp,), (outp,) = int_io.inputs, int_io.outputs
    assert (inp.name, inp.dtype, outp.name, outp.dtype) == ("image", "int8", "output_0", "int8")
    assert inp.quantization is not None and inp.quantization.scale > 0
    assert outp.quantization is not None and outp.quantization.scale > 0
    assert -128 <= inp.quantization.zero_point <= 127
    # The input scale covers the calibration range.
    lo = (-128 - inp.quantization.zero_point) * inp.quantization.scale
    hi = (127 - inp.quantization.zero_point) * inp.quantization.scale
    assert lo <= calib.min() + inp.quantization.scale and hi >= calib.max() - inp.quantization.scale

    runner = TfliteRunner(int_io.path)
    assert runner.inputs == int_io.inputs and runner.outputs == int_io.outputs
    reference = TfliteRunner(float_io.path)

    # By hand: quantize the feed, invoke the raw interpreter, dequantize; the runner must agree.
    from ai_edge_litert.interpreter import Interpreter

    raw = Interpreter(model_path=str(int_io.path))
    raw.allocate_tensors()
    s_in, z_in = inp.quantization.scale, inp.quantization.zero_point
    s_out, z_out = outp.quantization.scale, outp.quantization.zero_point
    for feed in feeds(val)[:16]:
        q = np.clip(np.round(feed["image"] / s_in) + z_in, -128, 127).astype(np.int8)
        raw.set_tensor(raw.get_input_details()[0]["index"], q)
        raw.invoke()
        by_hand = (raw.get_tensor(raw.get_output_details()[0]["index"]).astype(np.float32) - z_out) * s_out
        (got,) = runner.run(feed)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, by_hand, atol=1e-6)
        # Same calibration, same internal int8 graph: int8 I/O moves the (de)quantize ops out of the model.
        assert np.abs(got - reference.run(feed)[0]).max() <= 2 * s_out + 1e-6


def test_quantization_is_reproducible(digits, base, tmp_path: Path) -> None:
    _, calib, _ = digits
    a = quantize_tflite(base, "int8", tmp_path / "a.tflite", calibration=feeds(calib))
    b = quantize_tflite(base, "int8", tmp_path / "b.tflite", calibration=feeds(calib))
    assert a.path.read_bytes() == b.path.read_bytes()


def test_bad_requests(digits, base, tmp_path: Path) -> None:
    _, calib, _ = digits
    with pytest.raises(UsageError) as info:
        quantize_tflite(base, "int3", tmp_path / "x.tflite")
    assert all(name in str(info.value) for name in TFLITE_VARIANTS)
    for missing in (None, []):
        with pytest.raises(DataError, match="calibration") as info:
            quantize_tflite(base, "int8", tmp_path / "x.tflite", calibration=missing)
        assert "[data] calibration" in str(info.value)
    with pytest.raises(DataError, match="pixels"):
        quantize_tflite(base, "int8", tmp_path / "x.tflite", calibration=[{"pixels": calib[:1]}])
    with pytest.raises(DataError, match=r"\[1, 1, 8, 8\]"):
        quantize_tflite(base, "int8", tmp_path / "x.tflite", calibration=[{"image": calib[:2]}])
    with pytest.raises(UsageError, match="int8 I/O"):
        quantize_tflite(base, "dynamic-int8", tmp_path / "x.tflite", int8_io=True)
    fp16 = quantize_tflite(base, "fp16", tmp_path / "fp16.tflite")
    with pytest.raises(UsageError, match="fp32"):
        quantize_tflite(fp16, "int8-weights", tmp_path / "x.tflite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp16.tflite"]
