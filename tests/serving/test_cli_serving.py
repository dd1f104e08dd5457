"""`mobex serve-model` as a user runs it: a subprocess on 127.0.0.1 under load, and its refusals."""

from __future__ import annotations

import subprocess
import threading
import zipfile
from pathlib import Path

import numpy as np

from .conftest import Client, cli_env, mobex_cmd, stop, wait_for_url

CLIENTS = 50
REQUESTS = 100


def test_50_concurrent_clients_times_100_requests_without_an_error(digits, cli_server) -> None:
    url = cli_server(str(digits.bundle), "--key", str(digits.public_key), "--workers", "2")
    images = digits.validation()["image"]
    failures: list[str] = []
    answered = [0] * CLIENTS

    def client(k: int) -> None:
        c = Client(url)
        try:
            for i in range(REQUESTS):
                j = (k * REQUESTS + i) % len(images)
                reply = c.predict("digits-cnn", {"image": images[j : j + 1].tolist()})
                if reply.status != 200 or len(reply.json()["outputs"]["logits"]) != 1:
                    failures.append(f"client {k} request {i}: {reply.status} {reply.body[:200]!r}")
                    return
                answered[k] += 1
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(f"client {k}: {exc!r}")
        finally:
            c.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not failures, failures[:5]
    assert sum(answered) == CLIENTS * REQUESTS
    metrics = Client(url).request("GET", "/metrics").body.decode()
    assert f'mobex_requests_total{{code="200",endpoint="predict"}} {float(CLIENTS * REQUESTS)}' in metrics


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(mobex_cmd(*args), capture_output=True, text=True, timeout=300, env=cli_env())


def test_a_tampered_or_foreign_bundle_is_refused_before_anything_is_loaded(digits, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(digits.bundle) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(".tflite"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.writestr(info, data)
    done = _run("serve-model", str(tampered), "--key", str(digits.public_key), "--port", "0")
    assert done.returncode == 5 and "model/digits-cnn.tflite" in done.stderr, done.stderr
    from mobex.bundle.keys import generate_keypair

    _, other = generate_keypair(tmp_path / "other.pem")
    done = _run("serve-model", str(digits.bundle), "--key", str(other), "--port", "0")
    assert done.returncode == 5 and "different key" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_listening_beyond_loopback_needs_a_token(digits) -> None:
    done = _run("serve-model", str(digits.bundle), "--key", str(digits.public_key), "--host", "0.0.0.0", "--port", "0")
    assert done.returncode == 2 and "--token-file" in done.stderr, done.stderr
    done = _run("serve-model", "--key", str(digits.public_key), "--from", "reg")
    assert done.returncode == 2 and "--name" in done.stderr


def test_sigterm_stops_the_server_and_flushes_telemetry(digits, tmp_path: Path) -> None:
    telemetry = tmp_path / "t.jsonl"
    proc = subprocess.Popen(
        mobex_cmd("serve-model", str(digits.bundle), "--key", str(digits.public_key), "--port", "0",
                  "--telemetry", str(telemetry)),
        stderr=subprocess.PIPE, text=True, env=cli_env(),
    )  # fmt: skip
    try:
        c = Client(wait_for_url(proc), token=None)
        reply = c.predict("digits-cnn", {"image": np.zeros((3, 1, 8, 8)).tolist()}, **{"X-App-Version": "2.0"})
        assert reply.status == 200
        c.close()
        proc.terminate()
        proc.wait(timeout=30)
    finally:
        stop(proc)
    assert proc.returncode in (0, -15)  # uvicorn shuts down gracefully, then re-raises SIGTERM
    lines = telemetry.read_text().splitlines()
    assert len(lines) == 3 and all('"app_version":"2.0"' in line for line in lines)
    from mobex.monitor.record import PredictionRecord, parse_line

    records = [parse_line(line.encode()) for line in lines]
    assert all(isinstance(r, PredictionRecord) for r in records), records
    assert {r.model.version for r in records} == {"1.0.0"} and records[0].input.features["image.mean[c0]"] == 0.0
