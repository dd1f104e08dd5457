"""TorchRunner and TfliteRunner: output order, dtypes, casting of integer feeds, errors, call independence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobex.converters.tflite import convert_tflite
from mobex.errors import DataError, UsageError
from mobex.runtime.litert import TfliteRunner
from mobex.runtime.torch_model import TorchRunner, flatten_outputs

torch.set_num_threads(1)


class TokensAndFeatures(nn.Module):
    """int64 token ids + float features in; a dict (keys out of alphabetical order) and a tuple out."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 8)
        self.proj = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor, features: torch.Tensor):
        h = self.embed(ids).mean(1) + self.proj(features)
        logits = self.head(torch.relu(h))
        return {"logits": logits, "best": logits.argmax(-1)}, (h,)


def sample_feed(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"ids": rng.integers(0, 50, (1, 6)), "features": rng.standard_normal((1, 4))}  # int64 and float64


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[nn.Module, Path]:
    model = TokensAndFeatures().eval()
    example = {"ids": torch.zeros(1, 6, dtype=torch.int64), "features": torch.zeros(1, 4)}
    variant = convert_tflite(model, example, tmp_path_factory.mktemp("runner") / "m.tflite")
    return model, variant.path


def test_flatten_outputs_is_torch_pytree_order() -> None:
    a, b, c = torch.zeros(1), torch.ones(2), torch.full((3,), 2.0)
    assert [t.shape for t in flatten_outputs(({"z": a, "a": b}, [c, None]))] == [(1,), (2,), (3,)]
    assert [t.shape for t in flatten_outputs(a)] == [(1,)]


def test_torch_runner_flattens_and_keeps_integer_dtypes() -> None:
    model = TokensAndFeatures().eval()
    runner = TorchRunner(model, ["ids", "features"])
    feed = sample_feed(np.random.default_rng(0))
    logits, best, hidden = runner.run(feed)
    assert (logits.shape, best.shape, hidden.shape) == ((1, 3), (1,), (1, 8))
    assert (logits.dtype, best.dtype, hidden.dtype) == (np.float32, np.int64, np.float32)
    with torch.inference_mode():
        want = model(torch.from_numpy(feed["ids"]), torch.from_numpy(feed["features"]).float())
    np.testing.assert_array_equal(logits, want[0]["logits"].numpy())
    assert best[0] == logits.argmax()


def test_tflite_runner_matches_torch_and_casts_feeds(converted) -> None:
    model, path = converted
    runner = TfliteRunner(path, num_threads=1)
    assert [(s.name, s.dtype) for s in runner.inputs] == [("ids", "int32"), ("features", "float32")]
    assert [(s.name, s.dtype) for s in runner.outputs] == [
        ("output_0", "float32"),
        ("output_1", "int32"),  # argmax: int64 in torch, int32 in TFLite
        ("output_2", "float32"),
    ]
    reference = TorchRunner(model, ["ids", "features"])
    rng = np.random.default_rng(1)
    for _ in range(3):
        feed = sample_feed(rng)  # int64 ids and float64 features, as an .npz would hold them
        got, want = runner.run(feed), reference.run(feed)
        assert [g.shape for g in got] == [w.shape for w in want]
        assert got[0].dtype == np.float32 and got[1].dtype == np.int32
        assert np.abs(got[0] - want[0]).max() < 1e-5 and np.abs(got[2] - want[2]).max() < 1e-5
        assert got[1][0] == want[1][0]


def test_results_of_one_call_survive_the_next(converted) -> None:
    model, path = converted
    rng = np.random.default_rng(2)
    first, second = sample_feed(rng), sample_feed(rng)
    for runner in (TfliteRunner(path), TorchRunner(model, ["ids", "features"])):
        a = runner.run(first)
        kept = [x.copy() for x in a]
        runner.run(second)
        for x, y in zip(a, kept, strict=True):
            np.testing.assert_array_equal(x, y)


def test_bad_feeds_are_data_errors(converted) -> None:
    model, path = converted
    runner = TfliteRunner(path)
    feed = sample_feed(np.random.default_rng(3))
    with pytest.raises(DataError, match="'features' is missing"):
        runner.run({"ids": feed["ids"]})
    with pytest.raises(DataError, match="'features' is missing"):
        TorchRunner(model, ["ids", "features"]).run({"ids": feed["ids"]})
    with pytest.raises(DataError, match=r"\[1, 4\]"):
        runner.run({"ids": feed["ids"], "features": np.zeros((2, 4), np.float32)})


def test_missing_model_file_is_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no TFLite model"):
        TfliteRunner(tmp_path / "absent.tflite")


def test_multi_signature_file_uses_serving_default_in_torch_order(tmp_path: Path, monkeypatch) -> None:
    """A file whose serving_default is not subgraph 0 (written with litert-torch's multi-signature API)."""
    import litert_torch

    class Aux(nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"y": x * 2}

    class Main(nn.Module):
        def forward(self, x: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"second": x + z, "first": x - z}  # torch order is not alphabetical order

    monkeypatch.setenv("LITERT_TORCH_SHOW_PROGRESS", "n")
    path = tmp_path / "two.tflite"
    converter = litert_torch.signature("aux", Aux().eval(), sample_kwargs={"x": torch.zeros(1, 3)})
    converter.signature(
        "serving_default", Main().eval(), sample_kwargs={"x": torch.zeros(1, 2), "z": torch.zeros(1, 2)}
    )
    converter.convert().export(str(path))

    runner = TfliteRunner(path)
    assert runner.signature == "serving_default"
    assert [s.name for s in runner.inputs] == ["x", "z"]
    assert [s.name for s in runner.outputs] == ["second", "first"]
    second, first = runner.run({"x": np.ones((1, 2), np.float32), "z": np.full((1, 2), 3.0, np.float32)})
    np.testing.assert_array_equal(second, [[4.0, 4.0]])
    np.testing.assert_array_equal(first, [[-2.0, -2.0]])


def test_delegate_partitions_show_ops_outside_xnnpack(tmp_path: Path) -> None:
    """int8 HARD_SWISH has no XNNPACK kernel: the int8 graph splits around it; fp32 stays one partition."""
    from mobex.quantize.tflite.static_int8 import Int8Options
    from mobex.targets.tflite import quantize_tflite

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Hardswish(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.uniform(0, 1, (1, 1, 8, 8)).astype(np.float32)} for _ in range(32)]
    base = convert_tflite(model, {"x": torch.from_numpy(feeds[0]["x"])}, tmp_path / "hs.tflite")
    q = quantize_tflite(base, "int8", tmp_path / "hs-int8.tflite", calibration=feeds, int8=Int8Options(fallback=False))
    assert TfliteRunner(base.path).delegate_partitions() == 1
    assert TfliteRunner(q.path).delegate_partitions() == 2  # conv | HARD_SWISH outside | conv
    ops = TfliteRunner(q.path).delegation()
    assert ops is not None and ops.partitions == 2
    on_reference = [op.op for op in ops.reference_ops]
    assert on_reference == ["HARD_SWISH"]  # the one op XNNPACK has no int8 kernel for
    convs = [op for op in ops.ops if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D")]  # a 1-channel conv is depthwise
    assert [op.partition for op in convs] == [0, 1]  # one convolution in each partition
    report = ops.to_dict()
    assert report["by_op"]["HARD_SWISH"] == {"xnnpack": 0, "reference": 1}
    assert report["delegated_ops"] + report["reference_ops"] == report["ops"] == len(report["per_op"])
    assert all(op.partition == 0 for op in TfliteRunner(base.path).delegation().ops)


def test_delegation_walks_each_partition_back_to_its_inputs() -> None:
    """A node list as LiteRT gives it: the model's ops, then a DELEGATE node per partition (boundary tensors)."""
    from mobex.runtime.litert import delegation_of

    def node(index: int, name: str, inputs: list[int], outputs: list[int]) -> dict:
        return {"index": index, "op_name": name, "inputs": inputs, "outputs": outputs}

    nodes = [
        node(0, "QUANTIZE", [0], [1]),
        node(1, "CONV_2D", [1, 9, 10], [2]),
        node(2, "PRELU", [2, 11], [3]),  # outside XNNPACK
        node(3, "CONV_2D", [3, 12, 13], [4]),
        node(4, "DEQUANTIZE", [4], [5]),
        node(5, "DELEGATE", [0, 9, 10], [2]),
        node(6, "DELEGATE", [3, 12, 13], [5]),
    ]
    found = delegation_of(nodes, {2: "Block_0/conv", 3: "Block_0/prelu"})
    assert found.partitions == 2
    assert [(op.op, op.partition) for op in found.ops] == [
        ("QUANTIZE", 0), ("CONV_2D", 0), ("PRELU", None), ("CONV_2D", 1), ("DEQUANTIZE", 1),
    ]  # fmt: skip
    assert found.ops[2].tensor == "Block_0/prelu" and found.to_dict()["per_op"][2]["kernel"] == "reference"
