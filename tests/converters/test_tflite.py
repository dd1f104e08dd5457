"""convert_tflite on real models with the real litert-torch and LiteRT interpreter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobex.converters.tflite import convert_tflite
from mobex.errors import ConversionError, UsageError
from mobex.runtime.litert import TfliteRunner
from mobex.runtime.torch_model import TorchRunner

torch.set_num_threads(1)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.Hardswish(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise
        nn.BatchNorm2d(8),
        nn.Hardswish(),
        nn.Conv2d(8, 16, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    for module in model.modules():  # non-trivial BN statistics, so folding BN is actually tested
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


class BertLastHidden(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
        self.bert = BertModel(config).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class ManyOutputs(nn.Module):
    """Returns 12 tensors in a nested structure: a tuple of 10, then a dict with keys out of order."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 4)

    def forward(self, a: torch.Tensor, b: torch.Tensor):
        h = self.linear(a) - b
        return tuple(h * (i + 1) for i in range(10)), {"z": h.sum(-1), "a": h.abs().amax(-1)}


def test_cnn_converts_and_matches_torch(tmp_path: Path) -> None:
    model = small_cnn()
    out = tmp_path / "cnn.tflite"
    variant = convert_tflite(model, {"image": torch.randn(1, 1, 8, 8)}, out)

    assert (variant.target, variant.platform, variant.quantization) == ("tflite", "android", "fp32")
    assert variant.path == out and out.is_file() and variant.size_bytes == out.stat().st_size
    assert [(s.name, s.shape, s.dtype) for s in variant.inputs] == [("image", (1, 1, 8, 8), "float32")]
    assert [(s.name, s.shape, s.dtype) for s in variant.outputs] == [("output_0", (1, 10), "float32")]
    assert variant.seconds > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.tflite"]  # no temp file left behind

    tflite, reference = TfliteRunner(out), TorchRunner(model, ["image"])
    rng = np.random.default_rng(1)
    for _ in range(5):
        feed = {"image": rng.standard_normal((1, 1, 8, 8)).astype(np.float32)}
        (got,), (want,) = tflite.run(feed), reference.run(feed)
        assert got.dtype == np.float32 and got.shape == (1, 10)
        assert np.abs(got - want).max() < 1e-4


def test_bert_inputs_keep_recipe_names_and_match_torch(tmp_path: Path) -> None:
    model = BertLastHidden()
    example = {"input_ids": torch.randint(0, 100, (1, 16)), "attention_mask": torch.ones(1, 16, dtype=torch.int64)}
    variant = convert_tflite(model, example, tmp_path / "bert.tflite", output_names=["last_hidden_state"])

    # Signature names are the recipe's, in call order; litert-torch stores int64 ids as int32.
    assert [(s.name, s.shape, s.dtype) for s in variant.inputs] == [
        ("input_ids", (1, 16), "int32"),
        ("attention_mask", (1, 16), "int32"),
    ]
    assert [(s.name, s.shape) for s in variant.outputs] == [("last_hidden_state", (1, 16, 32))]
    assert any("'input_ids' is int32 in TFLite (int64 in torch)" in n for n in variant.notes)

    tflite = TfliteRunner(variant.path)
    assert tflite.signature == "serving_default"
    reference = TorchRunner(model, ["input_ids", "attention_mask"])
    rng = np.random.default_rng(2)
    for valid in (16, 11, 5):  # padded batches exercise the attention mask
        mask = np.zeros((1, 16), np.int64)
        mask[0, :valid] = 1
        feed = {"input_ids": rng.integers(0, 100, (1, 16)), "attention_mask": mask}  # int64, as in npz files
        (got,), (want,) = tflite.run(feed), reference.run(feed)
        assert np.abs(got - want).max() < 1e-4


def test_outputs_follow_torch_order_under_default_and_given_names(tmp_path: Path) -> None:
    model = ManyOutputs().eval()
    example = {"a": torch.randn(1, 4), "b": torch.randn(1, 4)}
    rng = np.random.default_rng(3)
    feed = {"a": rng.standard_normal((1, 4)).astype(np.float32), "b": rng.standard_normal((1, 4)).astype(np.float32)}
    want = TorchRunner(model, ["a", "b"]).run(feed)
    assert len(want) == 12

    default = convert_tflite(model, example, tmp_path / "default.tflite")
    assert [s.name for s in default.outputs] == [f"output_{i}" for i in range(12)]  # output_10 after output_9

    # Names sorting in the opposite order to torch's: the runner must still follow torch order.
    names = [f"out_{chr(ord('z') - i)}" for i in range(12)]
    named = convert_tflite(model, example, tmp_path / "named.tflite", output_names=names)
    assert [s.name for s in named.outputs] == names
    for variant in (default, named):
        runner = TfliteRunner(variant.path)
        assert [s.name for s in runner.outputs] == [s.name for s in variant.outputs]
        got = runner.run(feed)
        assert [g.shape for g in got] == [w.shape for w in want]
        for g, w in zip(got, want, strict=True):
            assert np.abs(g - w).max() < 1e-5


def test_unsupported_op_names_the_op_and_writes_nothing(tmp_path: Path) -> None:
    class Svd(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.svd(x)[1]

    out = tmp_path / "svd.tflite"
    with pytest.raises(ConversionError) as info:
        convert_tflite(Svd(), {"x": torch.randn(4, 4)}, out)
    assert "_linalg_svd" in str(info.value)
    assert info.value.hint
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    model = nn.Linear(4, 2)
    with pytest.raises(UsageError, match="x.in"):
        convert_tflite(model, {"x.in": torch.randn(1, 4)}, tmp_path / "m.tflite")
    with pytest.raises(UsageError, match="at least one"):
        convert_tflite(model, {}, tmp_path / "m.tflite")
    with pytest.raises(UsageError, match="2 output names"):
        convert_tflite(model, {"x": torch.randn(1, 4)}, tmp_path / "m.tflite", output_names=["a", "b"])
    with pytest.raises(ConversionError, match=r"x\[1, 5\]") as info:  # wrong shape: caught before torch.export
        convert_tflite(model, {"x": torch.randn(1, 5)}, tmp_path / "m.tflite")
    assert "[[inputs]]" in info.value.hint
    assert list(tmp_path.iterdir()) == []


class _Mixer(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svd(x)[1]


class _Nested(nn.Module):
    """An unsupported op deep inside: encoder.layers.1.mixer."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.ModuleDict({"proj": nn.Linear(4, 4), "mixer": _Mixer()})
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList([nn.ModuleDict({"proj": nn.Linear(4, 4)}), layer])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.layers[1]["mixer"](self.encoder.layers[0]["proj"](x))


def test_unsupported_op_error_names_the_module_path_and_a_workaround(tmp_path: Path) -> None:
    with pytest.raises(ConversionError) as info:
        convert_tflite(_Nested(), {"x": torch.randn(4, 4)}, tmp_path / "m.tflite")
    assert "encoder.layers.1.mixer" in info.value.message
    assert "op " in info.value.message and info.value.hint
