"""Issue 12 item 8: `mobex serve` answers an absurd Range with 416; `mobex pull` has a total deadline
that a dripping server cannot outlast, and a truncated download is a network error (exit 1).

Every server here is real and listens on 127.0.0.1: mobex's own RegistryServer, and for the hostile
cases a small proxy in front of a real published registry that misbehaves on purpose.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mobex.registry.publish import publish
from mobex.registry.server import RegistryServer
from tests.security.conftest import run_mobex

HUGE = "9" * 5000


@pytest.fixture
def registry(tmp_path: Path, signed_bundle, keypair) -> Path:
    reg = tmp_path / "registry"
    publish(signed_bundle(), reg, "stable", keypair[0])
    return reg


def _bundle_rel(registry: Path) -> str:
    return next(registry.glob("models/*/versions/*/*.zip")).relative_to(registry).as_posix()


def _get(url_host: str, port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(url_host, port, timeout=10)
    try:
        conn.request("GET", "/" + path, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_absurd_range_headers_get_clean_answers(registry: Path, capfd) -> None:
    rel = _bundle_rel(registry)
    size = (registry / rel).stat().st_size
    with RegistryServer(registry, "127.0.0.1", 0) as server:
        port = server.server_address[1]
        status, headers, _ = _get("127.0.0.1", port, rel, {"Range": f"bytes={HUGE}-"})
        assert status == 416 and headers["Content-Range"] == f"bytes */{size}"
        status, headers, body = _get("127.0.0.1", port, rel, {"Range": f"bytes=0-{HUGE}"})
        assert status == 206 and len(body) == size and headers["Content-Range"] == f"bytes 0-{size - 1}/{size}"
        status, _, body = _get("127.0.0.1", port, rel, {"Range": f"bytes=-{HUGE}"})
        assert status == 206 and len(body) == size
        status, _, body = _get("127.0.0.1", port, rel, {"Range": "bytes=10-19"})
        assert status == 206 and body == (registry / rel).read_bytes()[10:20]
    assert "Traceback" not in capfd.readouterr().err


class MisbehavingRegistry(BaseHTTPRequestHandler):
    """Serves a real registry folder, misbehaving on the bundle (or the first request) as `mode` says."""

    protocol_version = "HTTP/1.1"
    root: Path
    mode: str
    stop: threading.Event

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        rel = self.path.lstrip("/")
        path = self.root / rel
        if not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
        bundle = rel.endswith(".zip")
        try:
            if self.mode == "drip-headers":
                for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 100_000:
                    if self.stop.wait(0.05):
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            length = HUGE if (self.mode == "huge-length" and not bundle) else str(len(data))
            self.send_header("Content-Length", length)
            self.end_headers()
            if bundle and self.mode == "drip-body":
                for i in range(len(data)):
                    if self.stop.wait(0.05):
                        return
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
            elif bundle and self.mode == "truncate":
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
            else:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


@pytest.fixture
def misbehaving(registry: Path):  # noqa: ANN201
    servers: list[ThreadingHTTPServer] = []
    stop = threading.Event()

    def start(mode: str) -> str:
        handler = type("Handler", (MisbehavingRegistry,), {"root": registry, "mode": mode, "stop": stop})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    stop.set()
    for server in servers:
        server.shutdown()
        server.server_close()


def _pull(url: str, keypair, out: Path, *extra: str, timeout: float = 120):  # noqa: ANN001, ANN202
    return run_mobex("pull", "digits", "--from", url, "--key", str(keypair[1]), "--out", str(out),
                     "--platform", "android", "--channel", "stable", *extra, timeout=timeout)  # fmt: skip


def test_a_well_behaved_proxy_pulls(misbehaving, keypair, tmp_path: Path) -> None:
    run = _pull(misbehaving("ok"), keypair, tmp_path / "app", "--deadline", "60")
    assert run.code == 0, run.stderr
    assert (tmp_path / "app" / "current" / "manifest.json").is_file()


@pytest.mark.parametrize("mode", ["drip-body", "drip-headers"])
def test_a_dripping_server_cannot_outlast_the_deadline(misbehaving, keypair, tmp_path: Path, mode: str) -> None:
    start = time.monotonic()
    run = _pull(misbehaving(mode), keypair, tmp_path / "app", "--deadline", "4", timeout=90)
    elapsed = time.monotonic() - start
    assert run.code == 1, run.stderr
    assert "took longer than its deadline of 4 s" in run.stderr and "--deadline" in run.stderr
    assert "Traceback" not in run.stderr
    assert elapsed < 40  # process start and imports included; without the deadline it would be hours
    assert not (tmp_path / "app" / "current").exists()


def test_a_truncated_download_is_a_network_error(misbehaving, keypair, tmp_path: Path) -> None:
    run = _pull(misbehaving("truncate"), keypair, tmp_path / "app")
    assert run.code == 1, run.stderr
    assert "cut short" in run.stderr and "retry" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "app" / "current").exists()


def test_an_absurd_content_length_is_refused_cleanly(misbehaving, keypair, tmp_path: Path) -> None:
    run = _pull(misbehaving("huge-length"), keypair, tmp_path / "app")
    assert run.code == 5, run.stderr
    assert "more than the" in run.stderr and "Traceback" not in run.stderr
