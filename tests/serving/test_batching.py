"""Dynamic batching on a model whose batch axis is 5: concurrent samples share invocations, outputs unchanged."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mobex.runtime.litert import TfliteRunner

from .conftest import Client, start_server


@pytest.fixture(scope="module")
def batched_server(tabular5):  # noqa: ANN001, ANN201
    server = start_server(tabular5.bundle, tabular5.public_key, workers=2, batch_delay_ms=20)
    yield server
    server.stop()


def _expected(tabular5, tmp_path_factory, features: np.ndarray) -> np.ndarray:  # noqa: ANN001
    from mobex.bundle.archive import safe_extract

    root = tmp_path_factory.mktemp("tab") / "b"
    safe_extract(tabular5.bundle, root)
    runner = TfliteRunner(root / "model" / "tabular-mlp.tflite")
    return np.concatenate([runner.run({"features": features[i : i + 5]})[0] for i in range(0, len(features), 5)])


def test_concurrent_single_samples_are_batched_and_answered_exactly(tabular5, batched_server, tmp_path_factory) -> None:
    features = tabular5.validation()["features"]  # 45 samples
    expected = _expected(tabular5, tmp_path_factory, features)
    got: dict[int, list] = {}
    errors: list[str] = []
    start = threading.Barrier(len(features))

    def one(i: int) -> None:
        c = Client(batched_server.url)
        start.wait()
        reply = c.predict("tabular-mlp", {"features": features[i : i + 1].tolist()})
        if reply.status != 200:
            errors.append(f"{i}: {reply.status} {reply.body[:200]!r}")
        else:
            got[i] = reply.json()["outputs"]["logits"]
        c.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(features))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    # each sample's answer is its own row (a batch of 5 strangers computes row by row: batch-independent ops)
    np.testing.assert_allclose(np.asarray([got[i][0] for i in range(len(features))], np.float32), expected,
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    metrics = batched_server.service.metrics.exposition().decode()
    count = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("mobex_batch_size_count")))
    total = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("mobex_batch_size_sum")))
    assert total >= len(features) and total / count > 1.5, (total, count)  # several samples per invocation


def test_a_request_of_many_samples_is_split_and_padded(tabular5, batched_server, tmp_path_factory) -> None:
    features = tabular5.validation()["features"][:13]  # 2 full batches + 3 padded
    reply = Client(batched_server.url).predict("tabular-mlp", {"features": features.tolist()})
    assert reply.status == 200
    logits = np.asarray(reply.json()["outputs"]["logits"], np.float32)
    full = tabular5.validation()["features"][:15]
    np.testing.assert_allclose(logits, _expected(tabular5, tmp_path_factory, full)[:13], rtol=1e-5, atol=1e-5)
    contract = Client(batched_server.url).request("GET", "/v1/models/tabular-mlp").json()
    assert contract["batch"] == 5


def test_a_batch_1_model_is_not_batched(digits) -> None:
    server = start_server(digits.bundle, digits.public_key, batch_delay_ms=20)
    try:
        assert not server.service.batching_for(server.service.model)
        c = Client(server.url)
        assert c.predict("digits-cnn", {"image": np.zeros((3, 1, 8, 8)).tolist()}).status == 200
        assert "mobex_batch_size_sum 3.0" in c.request("GET", "/metrics").body.decode()  # 3 invocations of 1
        c.close()
    finally:
        server.stop()
