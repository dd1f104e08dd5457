"""ExecutorchRunner on real .pte files in ExecuTorch's own runtime: I/O contract, casts, errors, threads, latency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("executorch.exir", reason="executorch (the optional `executorch` extra) is not installed")

import mobex.runtime.executorch as et_runtime  # noqa: E402
from mobex.converters.executorch import convert_executorch, export_flat  # noqa: E402
from mobex.errors import DataError, UsageError  # noqa: E402
from mobex.runtime.executorch import (  # noqa: E402
    CoreMLDelegateRunner,
    ExecutorchRunner,
    read_delegation_plan,
    read_flattened_directory,
)
from mobex.runtime.latency import measure_runner  # noqa: E402
from mobex.runtime.torch_model import TorchRunner  # noqa: E402
from tests.converters.test_tflite import small_cnn  # noqa: E402
from tests.runtime.test_litert import TokensAndFeatures, sample_feed  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> tuple[nn.Module, Path]:
    model = TokensAndFeatures().eval()
    example = {"ids": torch.zeros(1, 6, dtype=torch.int64), "features": torch.zeros(1, 4)}
    path = tmp_path_factory.mktemp("et") / "tokens.pte"
    convert_executorch(model, example, path, output_names=["logits", "best", "hidden"])
    return model, path


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> tuple[nn.Module, Path]:
    model = small_cnn()
    path = tmp_path_factory.mktemp("et") / "cnn.pte"
    convert_executorch(model, {"image": torch.randn(1, 1, 8, 8)}, path)
    return model, path


def test_runner_reads_names_and_dtypes_and_follows_torch_order(tokens) -> None:
    model, path = tokens
    runner = ExecutorchRunner(path)
    specs = [(s.name, s.shape, s.dtype) for s in runner.inputs]
    assert specs == [("ids", (1, 6), "int64"), ("features", (1, 4), "float32")]
    assert [s.name for s in runner.outputs] == ["logits", "best", "hidden"]
    feed = sample_feed(np.random.default_rng(0))  # int64 ids and float64 features, as npz files hold them
    got, want = runner.run(feed), TorchRunner(model, ["ids", "features"]).run(feed)
    assert [g.dtype for g in got] == [np.float32, np.int64, np.float32]
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and np.abs(g - w).max() < 1e-5


def test_integer_feeds_are_cast_to_the_programs_dtype(tokens) -> None:
    _, path = tokens
    runner = ExecutorchRunner(path)
    feed = sample_feed(np.random.default_rng(1))
    as_int32 = {"ids": feed["ids"].astype(np.int32), "features": feed["features"].astype(np.float32)}
    for g, w in zip(runner.run(as_int32), runner.run(feed), strict=True):
        assert np.array_equal(g, w)


def test_outputs_of_one_call_survive_the_next(cnn) -> None:
    _, path = cnn
    runner = ExecutorchRunner(path)
    rng = np.random.default_rng(2)
    a, b = (rng.standard_normal((1, 1, 8, 8)).astype(np.float32) for _ in range(2))
    first = runner.run({"image": a})[0]
    kept = first.copy()
    runner.run({"image": b})
    assert np.array_equal(first, kept)


@pytest.mark.parametrize(
    ("feed", "message"),
    [
        ({"ids": np.zeros((1, 6), np.int64)}, "'features' is missing"),
        (
            {"ids": np.zeros((1, 7), np.int64), "features": np.zeros((1, 4))},
            r"'ids' has shape \[1, 7\], the ExecuTorch program takes \[1, 6\]",
        ),
    ],
)
def test_bad_feeds_are_data_errors(tokens, feed: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        ExecutorchRunner(tokens[1]).run(feed)


def test_missing_or_corrupt_files_are_usage_errors(tmp_path: Path, cnn) -> None:
    with pytest.raises(UsageError, match="no ExecuTorch program"):
        ExecutorchRunner(tmp_path / "absent.pte")
    corrupt = tmp_path / "corrupt.pte"
    data = bytearray(cnn[1].read_bytes())
    data[len(data) // 3 : len(data) // 3 + 64] = b"\xff" * 64
    corrupt.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(UsageError, match="not a valid ExecuTorch program"):
        ExecutorchRunner(corrupt)
    with pytest.raises(UsageError, match="at least 1"):
        ExecutorchRunner(cnn[1], num_threads=0)


def test_a_pte_without_stored_names_gets_positional_or_given_names(tmp_path: Path) -> None:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model = small_cnn()
    program = export_flat(model, {"image": torch.randn(1, 1, 8, 8)})
    path = tmp_path / "foreign.pte"
    path.write_bytes(to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)
    assert [s.name for s in ExecutorchRunner(path).inputs] == ["input_0"]
    named = ExecutorchRunner(path, input_names=["image"], output_names=["logits"])
    assert ([s.name for s in named.inputs], [s.name for s in named.outputs]) == (["image"], ["logits"])
    feed = {"image": np.random.default_rng(4).standard_normal((1, 1, 8, 8)).astype(np.float32)}
    assert np.abs(named.run(feed)[0] - TorchRunner(model, ["image"]).run(feed)[0]).max() < 1e-5
    with pytest.raises(UsageError, match="2 input and 1 output names"):
        ExecutorchRunner(path, input_names=["a", "b"], output_names=["y"])


def test_delegation_plan_counts_xnnpack_calls_and_portable_kernels(tokens, cnn) -> None:
    plan = read_delegation_plan(tokens[1])
    assert plan.delegates == {"XnnpackBackend": 1}
    assert {"aten::embedding.out", "aten::argmax.out"} <= set(plan.kernels)  # int64 work stays outside XNNPACK
    assert "outside delegates: " in plan.summary()
    assert ExecutorchRunner(cnn[1]).delegate_partitions() >= 1


def test_runners_with_different_thread_counts_can_alternate(cnn) -> None:
    """Resizing ExecuTorch's process-wide threadpool destroys the pool earlier methods hold: the runner reloads."""
    model, path = cnn
    feed = {"image": np.random.default_rng(5).standard_normal((1, 1, 8, 8)).astype(np.float32)}
    want = TorchRunner(model, ["image"]).run(feed)[0]
    one = ExecutorchRunner(path, num_threads=1)
    generation = et_runtime._POOL.generation
    two = ExecutorchRunner(path, num_threads=2)
    assert et_runtime._POOL.generation == generation + 1
    for runner in (one, two, one, two):
        assert np.abs(runner.run(feed)[0] - want).max() < 1e-5


def test_measure_runner_times_the_runner(cnn) -> None:
    _, path = cnn
    feed = {"image": np.zeros((1, 1, 8, 8), np.float32)}
    stats = measure_runner(lambda: ExecutorchRunner(path, num_threads=1), feed, threads=1, warmup=2, runs=10)
    assert stats.runs == 10 and 0 < stats.p50_ms <= stats.max_ms and stats.load_ms > 0


def test_missing_executorch_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, cnn) -> None:
    monkeypatch.setattr(et_runtime, "executorch_available", lambda: False)
    with pytest.raises(UsageError, match="needs the `executorch` package") as info:
        ExecutorchRunner(cnn[1])
    assert "requirements.lock" in info.value.hint


def _flattened(data: bytes, nodes: list[dict]) -> bytes:
    """A Core ML delegate payload as ExecuTorch lays it out: the files' bytes, then their index reversed."""
    import json

    return data + json.dumps({"nodes": nodes}).encode()[::-1]


def test_flattened_directory_reads_a_package_tree() -> None:
    payload = _flattened(b"{}weights", [
        {"name": "metadata.json", "kind": 0, "dataRegion": {"offset": 0, "size": 2}, "children": {}},
        {"name": "weight.bin", "kind": 0, "dataRegion": {"offset": 2, "size": 7}, "children": {}},
        {"name": "m.mlpackage", "kind": 1, "children": {"weight.bin": 1}},
        {"name": "root", "kind": 1, "children": {"metadata.json": 0, "m.mlpackage": 2}},
    ])  # fmt: skip
    assert read_flattened_directory(payload) == {"metadata.json": b"{}", "m.mlpackage/weight.bin": b"weights"}


@pytest.mark.parametrize(
    ("name", "region", "message"),
    [
        ("../evil", {"offset": 0, "size": 4}, "unsafe entry '../evil'"),
        ("a/b", {"offset": 0, "size": 4}, "unsafe entry 'a/b'"),
        ("big", {"offset": 0, "size": 10**6}, "points outside it"),
    ],
)
def test_flattened_directory_refuses_escapes_and_out_of_bounds_data(name: str, region: dict, message: str) -> None:
    payload = _flattened(b"data", [
        {"name": name, "kind": 0, "dataRegion": region, "children": {}},
        {"name": "root", "kind": 1, "children": {name: 0}},
    ])  # fmt: skip
    with pytest.raises(UsageError, match=message):
        read_flattened_directory(payload)
    loop = [{"name": "a", "kind": 1, "children": {"b": 1}}, {"name": "b", "kind": 1, "children": {"a": 0}}]
    cyclic = _flattened(b"", loop)
    with pytest.raises(UsageError, match="single root|cycle"):
        read_flattened_directory(cyclic)
    with pytest.raises(UsageError, match="no readable file index"):
        read_flattened_directory(b"not a payload")


def test_coreml_delegate_runner_refuses_a_program_core_ml_does_not_run_entirely(tokens) -> None:
    with pytest.raises(UsageError, match="is not one Core ML partition"):
        CoreMLDelegateRunner(tokens[1])
