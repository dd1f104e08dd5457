"""Fixtures for the model-server tests: real builds, a server on 127.0.0.1 (in-process or the CLI), an HTTP client."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.serving import builds

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "serving-test-token-0123456789abcdef"


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> builds.Built:
    return builds.digits(tmp_path_factory)


@pytest.fixture(scope="session")
def tabular5(tmp_path_factory: pytest.TempPathFactory) -> builds.Built:
    return builds.tabular_batch5(tmp_path_factory)


@pytest.fixture(scope="session")
def tabular_pte(tmp_path_factory: pytest.TempPathFactory) -> builds.Built:
    from mobex.runtime.executorch import executorch_available

    if not executorch_available():
        pytest.skip("the executorch extra is not installed")
    return builds.tabular_pte(tmp_path_factory)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


class Client:
    """One keep-alive HTTP/1.1 connection to the server (http.client: nothing between the test and the socket)."""

    def __init__(self, url: str, token: str | None = TOKEN, timeout: float = 60) -> None:
        m = re.match(r"http://([^:/]+):(\d+)", url)
        assert m, url
        self.conn = http.client.HTTPConnection(m.group(1), int(m.group(2)), timeout=timeout)
        self.token = token

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> Reply:
        h = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        h.update(headers or {})
        self.conn.request(method, path, body=body, headers=h)
        resp = self.conn.getresponse()
        data = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)

    def predict(self, name: str, inputs: dict, **headers: str) -> Reply:
        body = json.dumps({"inputs": inputs}).encode()
        return self.request("POST", f"/v1/models/{name}:predict", body, {"Content-Type": "application/json", **headers})

    def predict_npz(self, name: str, body: bytes) -> Reply:
        return self.request("POST", f"/v1/models/{name}:predict", body, {"Content-Type": "application/x-npz"})

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def client_for():
    made: list[Client] = []

    def make(url: str, token: str | None = TOKEN) -> Client:
        made.append(Client(url, token))
        return made[-1]

    yield make
    for c in made:
        c.close()


def start_server(bundle: Path, key: Path, *, token: str | None = TOKEN, **options):  # noqa: ANN003, ANN201
    """An in-process ModelServer on 127.0.0.1 (port 0), started; stop() it."""
    from mobex.serving.bundle import open_bundle_zip
    from mobex.serving.launch import load_model
    from mobex.serving.server import ModelServer
    from mobex.serving.service import ModelService, ServeOptions

    opts = ServeOptions(token=token, **options)
    model = load_model(open_bundle_zip(bundle, key), opts)
    return ModelServer(ModelService(model, opts), "127.0.0.1", 0).start()


@pytest.fixture(scope="module")
def digits_server(digits) -> Iterator:
    server = start_server(digits.bundle, digits.public_key, workers=2, max_samples=64)
    yield server
    server.stop()


def mobex_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mobex", *args]


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def wait_for_url(proc: subprocess.Popen, timeout_s: float = 120) -> str:
    """The URL serve-model prints on stderr once it listens; then stderr keeps being drained (no full pipe)."""
    assert proc.stderr is not None
    deadline, lines = time.monotonic() + timeout_s, []
    while time.monotonic() < deadline:
        lines.append(proc.stderr.readline())
        m = re.search(r" at (http://127\.0\.0\.1:\d+)/", lines[-1])
        if m:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return m.group(1)
        if not lines[-1] and proc.poll() is not None:
            break
    raise AssertionError("mobex serve-model did not start:\n" + "".join(lines))


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def cli_server(tmp_path: Path):
    """Start `mobex serve-model ...` (port 0, a token) and return its URL; always stopped."""
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> str:
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        procs.append(subprocess.Popen(
            mobex_cmd("serve-model", *args, "--port", "0", "--token-file", str(token_file)),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env(),
        ))  # fmt: skip
        return wait_for_url(procs[-1])

    yield start
    for proc in procs:
        stop(proc)
