"""convert_executorch on real models, with the real torch.export, ExecuTorch lowering (XNNPACK) and runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("executorch.exir", reason="executorch (the optional `executorch` extra) is not installed")

from mobex.converters.executorch import CoreMLDelegate, convert_executorch  # noqa: E402
from mobex.errors import ConversionError, UsageError  # noqa: E402
from mobex.recipe import load_recipe  # noqa: E402
from mobex.runtime.executorch import CoreMLDelegateRunner, ExecutorchRunner, read_delegation_plan  # noqa: E402
from mobex.runtime.torch_model import TorchRunner  # noqa: E402
from mobex.sources import load_model  # noqa: E402
from tests.conftest import SAMPLES  # noqa: E402
from tests.runtime.test_litert import TokensAndFeatures  # noqa: E402

torch.set_num_threads(1)


class Recurrent(nn.Module):
    """A GRU encoder and an LSTM over its outputs: returns the sequence, the LSTM's (h, c) and a head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.gru = nn.GRU(6, 8, batch_first=True)
        self.lstm = nn.LSTM(8, 8, num_layers=2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor):
        seq, _ = self.gru(x)
        seq, (h, c) = self.lstm(seq)
        return self.head(seq[:, -1]), (h, c), seq


def _sample(name: str) -> tuple[nn.Module, dict[str, torch.Tensor], list[dict[str, np.ndarray]], list[str]]:
    recipe = load_recipe(SAMPLES / name / "recipe.toml")
    data = np.load(SAMPLES / name / "data" / "val.npz")
    names = [spec.name for spec in recipe.inputs]
    feeds = [{n: data[n][i : i + 1].astype(np.float32) for n in names} for i in range(32)]
    example = {n: torch.from_numpy(feeds[0][n]) for n in names}
    return load_model(recipe), example, feeds, [o.name for o in recipe.outputs]


def _assert_matches_torch(
    model: nn.Module, path: Path, feeds: list[dict[str, np.ndarray]], atol: float, runner_class: type = ExecutorchRunner
) -> None:
    runner = runner_class(path)
    reference = TorchRunner(model, [s.name for s in runner.inputs])
    for feed in feeds:
        got, want = runner.run(feed), reference.run(feed)
        assert [g.shape for g in got] == [w.shape for w in want]
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype
            assert np.abs(g.astype(np.float64) - w).max() <= atol


@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits_cnn", "digits_vit", "tabular_mlp"])
def test_sample_models_match_torch(tmp_path: Path, name: str) -> None:
    model, example, feeds, output_names = _sample(name)
    out = tmp_path / f"{name}.pte"
    variant = convert_executorch(model, example, out, output_names=output_names)

    assert (variant.target, variant.platform, variant.quantization) == ("executorch", "android", "fp32")
    assert variant.path == out and variant.size_bytes == out.stat().st_size
    assert [(s.name, s.shape, s.dtype) for s in variant.inputs] == [
        (n, tuple(t.shape), "float32") for n, t in example.items()
    ]
    assert [s.name for s in variant.outputs] == output_names
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # nothing else left behind
    assert any(n.startswith("XnnpackBackend: ") for n in variant.notes)
    assert read_delegation_plan(out).delegates.get("XnnpackBackend", 0) >= 1
    _assert_matches_torch(model, out, feeds, atol=1e-4)


@pytest.mark.slow  # ~45 s on 2 cores: torch.export and XNNPACK lowering of a GRU and a 2-layer LSTM
def test_recurrent_model_with_nested_outputs_matches_torch(tmp_path: Path) -> None:
    model = Recurrent().eval()
    variant = convert_executorch(model, {"x": torch.randn(1, 5, 6)}, tmp_path / "rnn.pte")

    assert [(s.name, s.shape) for s in variant.outputs] == [
        ("output_0", (1, 3)),
        ("output_1", (2, 1, 8)),
        ("output_2", (2, 1, 8)),
        ("output_3", (1, 5, 8)),
    ]
    rng = np.random.default_rng(0)
    _assert_matches_torch(model, variant.path, [{"x": rng.standard_normal((1, 5, 6))} for _ in range(4)], 1e-5)


def test_int64_inputs_and_outputs_stay_int64_and_names_follow_torch_order(tmp_path: Path) -> None:
    model = TokensAndFeatures().eval()
    example = {"ids": torch.zeros(1, 6, dtype=torch.int64), "features": torch.zeros(1, 4)}
    names = ["logits", "best", "hidden"]  # torch order: the dict's values in insertion order, then the tuple
    variant = convert_executorch(model, example, tmp_path / "tokens.pte", output_names=names)

    assert [(s.name, s.dtype) for s in variant.inputs] == [("ids", "int64"), ("features", "float32")]
    assert [(s.name, s.dtype) for s in variant.outputs] == [
        ("logits", "float32"),
        ("best", "int64"),
        ("hidden", "float32"),
    ]
    assert any("'ids' stays int64" in n for n in variant.notes)
    plan = read_delegation_plan(variant.path)
    assert "aten::embedding.out" in plan.kernels  # XNNPACK takes no int64: the lookup runs on portable kernels
    rng = np.random.default_rng(1)
    feeds = [{"ids": rng.integers(0, 50, (1, 6)), "features": rng.standard_normal((1, 4))} for _ in range(4)]
    _assert_matches_torch(model, variant.path, feeds, 1e-5)


def test_global_average_pool_stays_in_the_xnnpack_partition(tmp_path: Path) -> None:
    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8, 3)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.conv(image)).mean(dim=(2, 3)))

    model = Pooled().eval()
    variant = convert_executorch(model, {"image": torch.randn(1, 1, 8, 8)}, tmp_path / "pooled.pte")
    plan = read_delegation_plan(variant.path)
    assert (plan.delegates, plan.kernels) == ({"XnnpackBackend": 1}, {})  # mean keepdim=False alone is not taken
    rng = np.random.default_rng(3)
    _assert_matches_torch(model, variant.path, [{"image": rng.standard_normal((1, 1, 8, 8))} for _ in range(4)], 1e-5)


@pytest.mark.parametrize(("precision", "atol"), [("fp32", 1e-4), ("fp16", 0.05)])
def test_coreml_delegate_for_ios_runs_its_ml_program_in_the_mil_interpreter(
    tmp_path: Path, precision: str, atol: float
) -> None:
    """The .pte cannot run here (ExecuTorch's Linux runtime has no Core ML backend); its ML program can."""
    model, example, feeds, output_names = _sample("digits_cnn")
    delegate = CoreMLDelegate(minimum_deployment_target="iOS17", precision=precision)
    variant = convert_executorch(model, example, tmp_path / f"digits-{precision}.pte", delegate=delegate)
    assert (variant.platform, variant.quantization) == ("ios", precision)
    assert read_delegation_plan(variant.path).delegates == {"CoreMLBackend": 1}
    assert "CoreMLBackend: 1 partition(s)" in variant.notes[1] and "every op delegated" in variant.notes[1]
    with pytest.raises(UsageError, match="needs the CoreMLBackend backend") as info:
        ExecutorchRunner(variant.path)
    assert "CoreMLDelegateRunner" in info.value.hint
    _assert_matches_torch(model, variant.path, feeds[:8], atol, CoreMLDelegateRunner)


@pytest.mark.slow
def test_coreml_delegate_keeps_torch_output_order_of_a_recurrent_model(tmp_path: Path) -> None:
    model = Recurrent().eval()
    delegate = CoreMLDelegate(precision="fp32")
    variant = convert_executorch(model, {"x": torch.randn(1, 5, 6)}, tmp_path / "rnn.pte", delegate=delegate)
    rng = np.random.default_rng(5)
    _assert_matches_torch(model, variant.path, [{"x": rng.standard_normal((1, 5, 6))} for _ in range(3)], 1e-5,
                          CoreMLDelegateRunner)  # fmt: skip


def test_op_outside_core_aten_names_the_op_and_writes_nothing(tmp_path: Path) -> None:
    class Median(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.median()

    with pytest.raises(ConversionError, match=r"at op aten\.median\.default") as info:
        convert_executorch(Median(), {"x": torch.randn(1, 4)}, tmp_path / "median.pte")
    assert "core ATen" in info.value.hint
    assert list(tmp_path.iterdir()) == []


def test_op_without_a_runtime_kernel_names_the_kernel_and_writes_nothing(tmp_path: Path) -> None:
    class Sort(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sort(-1).values

    with pytest.raises(ConversionError, match=r"no kernel for aten::sort\.values"):
        convert_executorch(Sort(), {"x": torch.randn(1, 4)}, tmp_path / "sort.pte")
    assert list(tmp_path.iterdir()) == []


def test_data_dependent_control_flow_is_a_conversion_error_with_a_hint(tmp_path: Path) -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(ConversionError, match="torch.export could not convert") as info:
        convert_executorch(Branchy(), {"x": torch.randn(1, 4)}, tmp_path / "branchy.pte")
    assert "control flow" in info.value.hint
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("example", "kwargs", "error", "message"),
    [
        ({}, {}, UsageError, "at least one"),
        ({"x": np.zeros((1, 4))}, {}, UsageError, "must be a torch.Tensor"),
        ({"x": torch.randn(1, 4)}, {"output_names": ["a", "b"]}, UsageError, "2 output names"),
        ({"x": torch.randn(1, 5)}, {}, ConversionError, r"x\[1, 5\]"),  # wrong shape: caught before torch.export
    ],
)
def test_bad_arguments(tmp_path: Path, example: dict, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message) as info:
        convert_executorch(nn.Linear(4, 2), example, tmp_path / "m.pte", **kwargs)
    if error is ConversionError:
        assert "[[inputs]]" in info.value.hint
    assert list(tmp_path.iterdir()) == []
