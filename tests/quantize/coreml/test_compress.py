"""Core ML weight compression on Linux: smaller packages, the right constexpr ops, weights that still
decompress close to the originals, metadata kept, and clear errors for impossible requests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import coremltools as ct
import numpy as np
import pytest
import torch
from torch import nn

from mobex.converters.coreml import LABELS_KEY, CoreMLMetadata, convert_coreml
from mobex.errors import ConversionError, UsageError
from mobex.plugins import variant as registered
from mobex.quantize.coreml.compress import constexpr_op_counts
from mobex.targets.coreml import compress_variant as compress_coreml

torch.set_num_threads(1)


class WideMLP(nn.Module):
    """Weights dominate the package (about 100k parameters), as in a real model."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 16))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def _convert(out: Path, target: str):
    torch.manual_seed(0)
    return convert_coreml(
        WideMLP().eval(), {"features": torch.randn(1, 128)}, out, precision="fp16", deployment_target=target,
        metadata=CoreMLMetadata(name="wide", version="2.0.0", author="tests", labels=[str(i) for i in range(16)]),
    )  # fmt: skip


@pytest.fixture(scope="module")
def coreml_base16(tmp_path_factory: pytest.TempPathFactory):
    return _convert(tmp_path_factory.mktemp("base16") / "wide.mlpackage", "iOS16")


@pytest.fixture(scope="module")
def coreml_base18(tmp_path_factory: pytest.TempPathFactory):
    return _convert(tmp_path_factory.mktemp("base18") / "wide.mlpackage", "iOS18")


def linear_weights(package: Path) -> list[np.ndarray]:
    """Each linear layer's weight as the device would see it (constexpr ops decompressed)."""
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    spec = ct.utils.load_spec(str(package))
    program = milproto_load(spec, spec.specificationVersion, str(package / "Data/com.apple.CoreML/weights"))
    weights = []
    for op in program.functions["main"].find_ops(op_type="linear"):
        producer = op.weight.op
        if producer.op_type.startswith("constexpr_"):
            weights.append(np.asarray(producer.materialized_val_inference(), dtype=np.float32))
        else:
            weights.append(np.asarray(op.weight.val, dtype=np.float32))
    return weights


@pytest.mark.parametrize(
    ("variant", "max_ratio"),
    [("int8-weights", 0.6), ("palettize-4bit", 0.35), ("palettize-2bit", 0.25), ("sparse-75", 0.45)],
)
def test_compressed_package_is_smaller_and_uses_constexpr_ops(
    coreml_base16, tmp_path: Path, variant: str, max_ratio: float
) -> None:
    out = compress_coreml(coreml_base16, variant, tmp_path / f"{variant}.mlpackage", deployment_target="iOS16")

    assert out.quantization == variant and out.target == "coreml" and out.platform == "ios"
    assert out.size_bytes <= max_ratio * coreml_base16.size_bytes, (out.size_bytes, coreml_base16.size_bytes)
    counts = constexpr_op_counts(out.path)
    assert sum(counts.get(op, 0) for op in registered("coreml", variant).expected_ops) == 3  # all three linear weights
    assert [(t.name, t.shape, t.dtype) for t in out.inputs] == [("features", (1, 128), "float32")]
    assert [(t.name, t.shape, t.dtype) for t in out.outputs] == [("output_0", (1, 16), "float32")]
    assert any("weight_threshold=256" in n for n in out.notes)
    ct.models.MLModel(str(out.path), skip_model_load=True)


def test_int8_weights_decompress_within_half_a_step(coreml_base16, tmp_path: Path) -> None:
    out = compress_coreml(coreml_base16, "int8-weights", tmp_path / "q.mlpackage", deployment_target="iOS16")
    assert "constexpr_affine_dequantize" in constexpr_op_counts(out.path)
    for original, restored in zip(linear_weights(coreml_base16.path), linear_weights(out.path), strict=True):
        step = np.abs(original).max(axis=1, keepdims=True) / 127  # symmetric, per output channel
        assert np.all(np.abs(restored - original) <= step * 0.51 + 1e-3)


def test_palettized_weights_use_at_most_16_values_per_tensor(coreml_base16, tmp_path: Path) -> None:
    out = compress_coreml(coreml_base16, "palettize-4bit", tmp_path / "p.mlpackage", deployment_target="iOS16")
    for original, restored in zip(linear_weights(coreml_base16.path), linear_weights(out.path), strict=True):
        assert len(np.unique(restored)) <= 16
        assert np.abs(restored - original).max() < 0.25 * np.abs(original).max()


def test_sparse_weights_have_the_requested_zeros(coreml_base16, tmp_path: Path) -> None:
    out = compress_coreml(coreml_base16, "sparse-50", tmp_path / "s.mlpackage", deployment_target="iOS16")
    for original, restored in zip(linear_weights(coreml_base16.path), linear_weights(out.path), strict=True):
        assert abs(np.mean(restored == 0) - 0.5) < 0.01
        kept = restored != 0
        np.testing.assert_array_equal(restored[kept], original[kept])
        assert np.abs(original[~kept]).max() <= np.abs(original[kept]).min()


def test_int4_weights_on_ios18(coreml_base18, tmp_path: Path) -> None:
    out = compress_coreml(coreml_base18, "int4-weights", tmp_path / "q4.mlpackage", deployment_target="iOS18")
    assert constexpr_op_counts(out.path).get("constexpr_blockwise_shift_scale") == 3
    assert out.size_bytes <= 0.35 * coreml_base18.size_bytes
    for original, restored in zip(linear_weights(coreml_base18.path), linear_weights(out.path), strict=True):
        blocks = np.abs(original).reshape(original.shape[0], -1, 32).max(axis=2)
        step = np.repeat(blocks, 32, axis=1) / 7  # int4 symmetric, per block of 32 inputs
        assert np.all(np.abs(restored - original) <= step * 0.51 + 1e-3)


def test_grouped_palettes_keep_channels_of_different_scales(tmp_path: Path) -> None:
    """palettize-4bit-grouped (iOS18): one 16-value palette per 16 output channels. With channel scales spread
    over 100x, one palette per tensor spends its levels on the large channels and flattens the small ones."""
    torch.manual_seed(0)
    model = WideMLP().eval()
    with torch.no_grad():
        layer = model.net[2]
        layer.weight.mul_(torch.logspace(-1, 1, layer.weight.shape[0])[:, None])
    base = convert_coreml(
        model, {"features": torch.randn(1, 128)}, tmp_path / "base.mlpackage", precision="fp16",
        deployment_target="iOS18", metadata=CoreMLMetadata(name="wide", version="2.0.0"),
    )  # fmt: skip
    truth = linear_weights(base.path)[1]
    errors = {}
    for variant in ("palettize-4bit", "palettize-4bit-grouped"):
        out = compress_coreml(base, variant, tmp_path / f"{variant}.mlpackage", deployment_target="iOS18")
        assert constexpr_op_counts(out.path).get("constexpr_lut_to_dense") == 3
        got = linear_weights(out.path)[1]
        small = slice(0, 64)  # the channels with the smallest scales
        errors[variant] = float(np.abs(got[small] - truth[small]).mean() / np.abs(truth[small]).mean())
    assert errors["palettize-4bit-grouped"] < errors["palettize-4bit"] / 3, errors
    with pytest.raises(UsageError, match="needs iOS18 or later"):
        compress_coreml(base, "palettize-4bit-grouped", tmp_path / "x.mlpackage", deployment_target="iOS17")


def test_metadata_is_kept(coreml_base16, tmp_path: Path) -> None:
    out = compress_coreml(coreml_base16, "palettize-4bit", tmp_path / "p.mlpackage", deployment_target="iOS16")
    model = ct.models.MLModel(str(out.path), skip_model_load=True)
    assert (model.version, model.author, model.short_description) == ("2.0.0", "tests", "wide")
    user = dict(model.user_defined_metadata)
    assert json.loads(user[LABELS_KEY]) == [str(i) for i in range(16)]
    assert user["mobex.compression"] == "palettize-4bit"
    assert "com.github.apple.coremltools.conversion_date" not in user


def test_compression_is_reproducible(coreml_base16, tmp_path: Path) -> None:
    def digest(path: Path) -> dict[str, str]:
        return {
            str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in path.rglob("*") if p.is_file()
        }

    first = compress_coreml(coreml_base16, "palettize-4bit", tmp_path / "a.mlpackage", deployment_target="iOS16")
    second = compress_coreml(coreml_base16, "palettize-4bit", tmp_path / "b.mlpackage", deployment_target="iOS16")
    assert digest(first.path) == digest(second.path)


@pytest.mark.parametrize(
    ("variant", "target", "message"),
    [
        ("int4-weights", "iOS16", "int4-weights needs iOS18 or later"),
        ("int4-weights", "iOS17", "int4-weights needs iOS18 or later"),
        ("int4-weights", "iOS18", "needs a base converted for iOS18"),
        ("palettize-3bit", "iOS16", "unknown Core ML compression variant"),
        ("sparse-0", "iOS16", "unknown Core ML compression variant"),
        ("sparse-100", "iOS16", "unknown Core ML compression variant"),
        ("fp8-weights", "iOS16", "unknown Core ML compression variant"),
        ("int8-weights", "iOS15", "needs iOS16 or later"),
        ("int8-weights", "iOS99", "unknown Core ML deployment target"),
    ],
)
def test_usage_errors(coreml_base16, tmp_path: Path, variant: str, target: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        compress_coreml(coreml_base16, variant, tmp_path / "x.mlpackage", deployment_target=target)
    assert not (tmp_path / "x.mlpackage").exists()


def test_base_newer_than_target_is_refused(coreml_base18, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs a newer OS"):
        compress_coreml(coreml_base18, "int8-weights", tmp_path / "x.mlpackage", deployment_target="iOS16")


def test_threshold_above_every_weight_is_an_error(coreml_base16, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="left every weight"):
        compress_coreml(
            coreml_base16, "int8-weights", tmp_path / "x.mlpackage", deployment_target="iOS16",
            weight_threshold=1_000_000,
        )  # fmt: skip


# --------------------------------------------------------------------------- w8a8


class SmallCNN(nn.Module):
    """Conv, residual add, pooling and a linear head: the ops coremltools puts activation quantization around."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.body = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(image))
        x = x + torch.relu(self.body(x))
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def cnn17(tmp_path_factory: pytest.TempPathFactory):
    """A small CNN trained for a moment on scikit-learn's digits, converted for iOS17, and its data."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0)[:, None]
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x[:1000]), torch.from_numpy(data.target[:1000])
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    model.eval()
    base = convert_coreml(
        model, {"image": torch.from_numpy(x[:1])}, tmp_path_factory.mktemp("cnn17") / "cnn.mlpackage",
        precision="fp16", deployment_target="iOS17", metadata=CoreMLMetadata(name="cnn", version="1.0.0"),
    )  # fmt: skip
    calib = [{"image": x[i : i + 1]} for i in range(1000, 1064)]
    val = [{"image": x[i : i + 1]} for i in range(1100, 1200)]
    return base, calib, val


def test_w8a8_inserts_activation_quantization_and_runs_close_to_fp16(cnn17, tmp_path: Path) -> None:
    from mobex.quantize.coreml.compress import program_op_counts
    from mobex.runtime.mil.interpreter import MilReferenceRunner

    base, calib, val = cnn17
    out = compress_coreml(base, "w8a8", tmp_path / "w8a8.mlpackage", deployment_target="iOS17", calibration=calib)
    ops = program_op_counts(out.path)
    assert ops.get("quantize", 0) >= 3 and ops.get("dequantize", 0) >= 3, ops  # around convs, add and linear
    assert (
        constexpr_op_counts(out.path).get("constexpr_affine_dequantize", 0)
        + constexpr_op_counts(out.path).get("constexpr_blockwise_shift_scale", 0)
        >= 1
    )  # int8 weights as well
    assert any("MIL reference interpreter" in note for note in out.notes)
    assert [(t.name, t.shape) for t in out.inputs] == [("image", (1, 1, 8, 8))]

    # The quantize ops carry int8 scales that cover what calibration saw.
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    spec = ct.utils.load_spec(str(out.path))
    program = milproto_load(spec, spec.specificationVersion, str(out.path / "Data/com.apple.CoreML/weights"))
    quantize_ops = program.functions["main"].find_ops(op_type="quantize")
    assert all(str(op.output_dtype.val) == "int8" for op in quantize_ops)
    assert all(float(np.max(op.scale.val)) > 0 for op in quantize_ops)

    fp16, w8a8 = MilReferenceRunner(base.path), MilReferenceRunner(out.path)
    a = np.concatenate([fp16.run(f)[0] for f in val])
    b = np.concatenate([w8a8.run(f)[0] for f in val])
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.98, cosine.min()
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.93  # a quick fit: some digits are close calls
    assert not np.allclose(a, b, atol=1e-3)  # activations really are quantized


@pytest.mark.parametrize(
    ("calibration", "target", "error", "message"),
    [
        (None, "iOS17", "DataError", "needs calibration data"),
        ([], "iOS17", "DataError", "needs calibration data"),
        ([{"pixels": np.zeros((1, 1, 8, 8), np.float32)}], "iOS17", "DataError", "the model takes"),
        ([{"image": np.zeros((2, 1, 8, 8), np.float32)}], "iOS17", "DataError", r"shape \[2, 1, 8, 8\]"),
        ([{"image": np.full((1, 1, 8, 8), np.nan, np.float32)}], "iOS17", "DataError", "NaN"),
        ([{"image": np.zeros((1, 1, 8, 8), np.float32)}], "iOS16", "UsageError", "w8a8 needs iOS17"),
    ],
)
def test_w8a8_bad_requests_fail_before_any_work(cnn17, tmp_path: Path, calibration, target, error, message) -> None:
    from mobex import errors

    base, _, _ = cnn17
    with pytest.raises(getattr(errors, error), match=message):
        compress_coreml(base, "w8a8", tmp_path / "x.mlpackage", deployment_target=target, calibration=calibration)
    assert list(tmp_path.iterdir()) == []
