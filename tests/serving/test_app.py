"""The HTTP API over real HTTP on 127.0.0.1: predictions equal LiteRT's, bad inputs get the right 4xx."""

from __future__ import annotations

import io
import json
import socket
import zipfile

import numpy as np
import pytest

from mobex.runtime.litert import TfliteRunner

from .conftest import TOKEN, Client


@pytest.fixture(scope="module")
def interpreter(digits, tmp_path_factory):  # noqa: ANN001, ANN201
    """LiteRT on the model file of the verified bundle itself."""
    from mobex.bundle.archive import safe_extract

    root = tmp_path_factory.mktemp("bundle") / "x"
    safe_extract(digits.bundle, root)
    return TfliteRunner(root / "model" / "digits-cnn.tflite")


def test_predictions_equal_the_interpreters_outputs_for_the_validation_data(
    digits, digits_server, interpreter, client_for
) -> None:
    images = digits.validation()["image"]
    expected = np.concatenate([interpreter.run({"image": images[i : i + 1]})[0] for i in range(len(images))])
    client = client_for(digits_server.url)
    got, npz_got = [], []
    for lo in range(0, len(images), 40):  # 9 requests of 40 samples (JSON), the same as .npz
        reply = client.predict("digits-cnn", {"image": images[lo : lo + 40].tolist()})
        assert reply.status == 200, reply.body
        body = reply.json()
        got.append(np.asarray(body["outputs"]["logits"], np.float32))
        assert body["model"]["name"] == "digits-cnn" and body["model"]["version"] == "1.0.0"
        assert [p["class"] for p in body["predictions"]] == got[-1].argmax(axis=1).tolist()
        assert len(body["ids"]) == 40 and len(set(body["ids"])) == 40
        buf = io.BytesIO()
        np.savez(buf, image=images[lo : lo + 40])
        binary = client.predict_npz("digits-cnn", buf.getvalue())
        assert binary.status == 200 and binary.headers["content-type"] == "application/x-npz"
        assert binary.headers["x-mobex-model-version"] == "1.0.0"
        with np.load(io.BytesIO(binary.body), allow_pickle=False) as npz:
            npz_got.append(npz["logits"])
    np.testing.assert_array_equal(np.concatenate(got), expected)
    np.testing.assert_array_equal(np.concatenate(npz_got), expected)
    labels = digits.validation()["labels"]
    accuracy = float(np.mean(np.concatenate(got).argmax(axis=1) == labels))
    assert accuracy == pytest.approx(digits.report["variants"][1]["parity"]["accuracy"])


def test_classifier_answers_have_labels_and_top_k(digits, digits_server, client_for) -> None:
    client = client_for(digits_server.url)
    image = digits.validation()["image"][:1]
    body = client.request("POST", "/v1/models/digits-cnn:predict?top_k=3",
                          json.dumps({"inputs": {"image": image.tolist()}}).encode(),
                          {"Content-Type": "application/json"}).json()  # fmt: skip
    pred = body["predictions"][0]
    assert len(pred["top_k"]) == 3 and pred["top_k"][0]["class"] == pred["class"]
    assert pred["label"] == str(pred["class"])  # the sample's labels are the digits
    scores = [t["score"] for t in pred["top_k"]]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-9


def _error(reply, status: int, *words: str) -> None:  # noqa: ANN001
    assert reply.status == status, (reply.status, reply.body)
    message = reply.json()["error"]
    for word in words:
        assert word in message, (word, message)


def test_bad_inputs_each_get_the_right_4xx(digits, digits_server, client_for) -> None:
    c = client_for(digits_server.url)
    good = digits.validation()["image"][:2]
    _error(c.predict("digits-cnn", {"image": good[:, 0].tolist()}), 422, "shape [2, 8, 8]", "[N, 1, 8, 8]")
    _error(c.predict("digits-cnn", {"image": [[[["a"] * 8] * 8]]}), 422, "numbers only")
    _error(c.predict("digits-cnn", {"image": [[[[True] * 8] * 8]]}), 422, "boolean")
    _error(c.predict("digits-cnn", {"image": [[[[False] + [0.5] * 7] * 8]]}), 422, "mixes true/false")
    _error(c.predict("digits-cnn", {}), 422, "missing input 'image'")
    _error(c.predict("digits-cnn", {"image": good.tolist(), "extra": [1]}), 422, "unknown input 'extra'")
    _error(c.predict("digits-cnn", {"image": (good * 16).tolist()}), 422, "preprocessing range [0, 1]")
    _error(c.predict("digits-cnn", {"image": [[[[0.5] * 8] * 7 + [[0.5] * 7]]]}), 422, "not a rectangular array")
    nan = json.dumps({"inputs": {"image": good.tolist()}}).replace("0.0", "NaN", 1).encode()
    _error(c.request("POST", "/v1/models/digits-cnn:predict", nan, {"Content-Type": "application/json"}), 422, "NaN")
    huge = nan.replace(b"NaN", b"1e999")  # valid JSON that Python reads as infinity
    _error(c.request("POST", "/v1/models/digits-cnn:predict", huge, {"Content-Type": "application/json"}), 422,
           "NaN or infinity")  # fmt: skip
    too_many = np.zeros((65, 1, 8, 8)).tolist()
    _error(c.predict("digits-cnn", {"image": too_many}), 422, "send 1 to 64")
    _error(c.request("POST", "/v1/models/digits-cnn:predict", b"{not json", {"Content-Type": "application/json"}),
           400, "not valid JSON")  # fmt: skip
    _error(c.request("POST", "/v1/models/digits-cnn:predict", b"x", {"Content-Type": "text/plain"}), 415, "x-npz")
    _error(c.predict("other-model", {"image": good.tolist()}), 404, "serves 'digits-cnn'")
    _error(c.request("GET", "/v1/models/nope"), 404, "no model named")
    # .npz: wrong dtype, NaN, a pickle, garbage
    for arrays, status, word in ((good.astype(np.int64), 422, "integer"), (good * np.nan, 422, "NaN")):
        buf = io.BytesIO()
        np.savez(buf, image=arrays)
        _error(c.predict_npz("digits-cnn", buf.getvalue()), status, word)
    buf = io.BytesIO()
    np.savez(buf, image=np.array([{"a": 1}], dtype=object))
    _error(c.predict_npz("digits-cnn", buf.getvalue()), 400, "not a readable .npz")
    # the connection survived all of that
    assert c.predict("digits-cnn", {"image": good.tolist()}).status == 200


def _raw(server, head: bytes, chunks=()) -> bytes:  # noqa: ANN001
    """Send a request head (and chunks) on a plain socket; return what the server answered first."""
    with socket.create_connection(server.sock.getsockname()[:2], timeout=30) as s:
        s.sendall(head)
        try:
            for chunk in chunks:
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close as soon as it has answered
        return s.recv(4096)


def test_huge_bodies_are_refused_before_they_are_read(digits, digits_server, client_for) -> None:
    cap = digits_server.service.options.max_body_bytes
    start = (b"POST /v1/models/digits-cnn:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             + f"Authorization: Bearer {TOKEN}\r\n".encode())  # fmt: skip
    # a declared length over the cap: answered without sending a byte of the body
    answer = _raw(digits_server, start + f"Content-Length: {cap + 1}\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 413") and b"over the" in answer, answer[:300]
    # a chunked body (no Content-Length) is counted while it streams
    chunk = b"1" * 65536
    body = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(cap // len(chunk) + 2))
    answer = _raw(digits_server, start + b"Transfer-Encoding: chunked\r\n\r\n", body)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    # an .npz that unpacks to more than the cap
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("image.npy", b"\0" * (cap + 1))
    c = client_for(digits_server.url)
    _error(c.predict_npz("digits-cnn", buf.getvalue()), 413, "unpacks to")
    assert 'reason="too_large"' in c.request("GET", "/metrics").body.decode()


def test_token_is_required_everywhere_but_healthz(digits, digits_server, client_for) -> None:
    image = digits.validation()["image"][:1].tolist()
    for token in (None, "wrong-token-0123456789abcdefghij", TOKEN[:-1]):
        c = client_for(digits_server.url, token)
        reply = c.predict("digits-cnn", {"image": image})
        _error(reply, 401, "Bearer token")
        assert reply.headers["www-authenticate"].startswith("Bearer")
        for path in ("/v1/models/digits-cnn", "/metrics", "/openapi.json"):
            assert c.request("GET", path).status == 401, path
        assert c.request("GET", "/healthz").status == 200
    basic = client_for(digits_server.url, None).request("GET", "/metrics", headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status == 401


def test_contract_health_metrics_and_openapi(digits, digits_server, client_for) -> None:
    # asyncio sets TCP_NODELAY on accepted sockets only when the listening socket's proto is TCP; without it a
    # keep-alive answer (headers, then body) waits 40 ms for the client's delayed ACK
    assert digits_server.sock.proto == socket.IPPROTO_TCP
    c = client_for(digits_server.url)
    contract = c.request("GET", "/v1/models/digits-cnn").json()
    image = {"dtype": "float32", "name": "image", "shape": [1, 1, 8, 8], "torch_dtype": "float32"}
    assert contract["inputs"] == [image]
    assert contract["preprocessing"]["range"] == [0.0, 1.0] and contract["labels"][:2] == ["0", "1"]
    assert contract["batch"] == 1 and contract["model"]["sha256"] == digits_server.service.model.info.sha256
    assert contract["validated"]["accuracy"] == pytest.approx(0.9888888888888889)
    health = c.request("GET", "/healthz").json()
    assert health == {"status": "ok", "model": contract["model"]}
    c.predict("digits-cnn", {"image": digits.validation()["image"][:3].tolist()})
    c.predict("digits-cnn", {})
    text = c.request("GET", "/metrics").body.decode()
    for needle in (
        'mobex_requests_total{code="200",endpoint="predict"}',
        'mobex_request_errors_total{endpoint="predict",reason="invalid_input"}',
        "mobex_request_duration_seconds_bucket",
        "mobex_batch_size_bucket",
        f'mobex_model_info{{name="digits-cnn",sha256="{contract["model"]["sha256"]}",version="1.0.0"}} 1.0',
        "mobex_predictions_total{label=",
    ):
        assert needle in text, needle
    spec = c.request("GET", "/openapi.json").json()
    assert spec["openapi"].startswith("3.1") and "/v1/models/{name}:predict" in spec["paths"]
    image = spec["paths"]["/v1/models/{name}:predict"]["post"]["requestBody"]["content"]["application/json"]
    leaf = image["schema"]["properties"]["inputs"]["properties"]["image"]["items"]["items"]["items"]["items"]
    assert leaf == {"type": "number", "minimum": 0.0, "maximum": 1.0}


def test_a_request_over_its_timeout_gets_503(digits) -> None:
    from .conftest import start_server

    server = start_server(digits.bundle, digits.public_key, timeout_s=0.002, max_samples=256)
    try:
        c = Client(server.url)
        reply = c.predict("digits-cnn", {"image": np.zeros((256, 1, 8, 8)).tolist()})  # 256 invocations: > 2 ms
        _error(reply, 503, "longer than 0.002 s")
        assert reply.headers["retry-after"] == "1"
        assert 'reason="timeout"' in c.request("GET", "/metrics").body.decode()
        c.close()
    finally:
        server.stop()
