"""The runner registry: which runtime serves which model format, and clear errors for the rest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mobex.errors import UsageError
from mobex.serving import runners


def test_tflite_is_served_by_litert(digits, tmp_path: Path) -> None:
    from mobex.bundle.archive import safe_extract
    from mobex.runtime.litert import TfliteRunner

    safe_extract(digits.bundle, tmp_path / "b")
    runner = runners.make_runner("tflite", tmp_path / "b" / "model" / "digits-cnn.tflite", 1)
    assert isinstance(runner, TfliteRunner)
    out = runner.run({"image": np.zeros((1, 1, 8, 8), np.float32)})
    assert out[0].shape == (1, 10)


def test_a_pte_bundle_is_served_by_executorchs_runtime(tabular_pte, client_for, tmp_path: Path) -> None:
    """`mobex serve-model` on a bundle whose model is a `.pte`: answers equal ExecuTorch's runtime on the file."""
    from mobex.bundle.archive import safe_extract
    from mobex.runtime.executorch import ExecutorchRunner

    from .conftest import start_server

    safe_extract(tabular_pte.bundle, tmp_path / "b")
    path = tmp_path / "b" / "model" / "tabular-mlp.pte"
    runner = runners.make_runner("pte", path, 1)
    assert isinstance(runner, ExecutorchRunner)
    features = tabular_pte.validation()["features"]
    expected = np.concatenate([runner.run({"features": features[i : i + 1]})[0] for i in range(len(features))])
    server = start_server(tabular_pte.bundle, tabular_pte.public_key, workers=1, max_samples=64)
    try:
        reply = client_for(server.url).predict("tabular-mlp", {"features": features.tolist()})
        assert reply.status == 200, reply.body
        np.testing.assert_array_equal(np.asarray(reply.json()["outputs"]["logits"], np.float32), expected)
    finally:
        server.stop()


def test_a_pte_without_the_executorch_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import mobex.runtime.executorch as et

    monkeypatch.setattr(et, "executorch_available", lambda: False)
    with pytest.raises(UsageError, match="needs the `executorch` package") as err:
        runners.make_runner("pte", Path("model.pte"), 1)
    assert "pip install --no-deps executorch==1.5.1" in (err.value.hint or "")


def test_unknown_and_unservable_formats_say_what_to_do() -> None:
    with pytest.raises(UsageError, match="no runtime serves model format 'onnx'") as err:
        runners.resolve_factory("onnx")
    assert "tflite" in (err.value.hint or "")
    with pytest.raises(UsageError, match="cannot serve a 'mlpackage'") as err:
        runners.resolve_factory("mlpackage")
    assert "android bundle" in (err.value.hint or "")
    runners.register_runner("test-missing", "mobex.runtime.no_such_module:Runner")
    runners.register_runner("test-no-class", "mobex.runtime.litert:NoSuchRunner")
    try:
        with pytest.raises(UsageError, match="needs mobex.runtime.no_such_module"):
            runners.resolve_factory("test-missing")
        with pytest.raises(UsageError, match="has no runner class NoSuchRunner"):
            runners.resolve_factory("test-no-class")
    finally:
        runners._RUNNERS.pop("test-missing")
        runners._RUNNERS.pop("test-no-class")


def test_one_registration_plugs_in_a_runtime() -> None:
    class Doubler:
        def __init__(self, path: Path, threads: int) -> None:
            self.path, self.threads = path, threads

        def run(self, feed: dict) -> list:
            return [feed["x"] * 2]

    runners.register_runner("test-doubler", Doubler)
    try:
        runner = runners.make_runner("test-doubler", Path("m.bin"), 3)
        assert runner.threads == 3 and runner.run({"x": np.ones(2)})[0].tolist() == [2, 2]
        assert "test-doubler" in runners.registered_formats()
    finally:
        runners._RUNNERS.pop("test-doubler")
