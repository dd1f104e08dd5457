from __future__ import annotations

import http.client
import os
import threading
from pathlib import Path

import pytest

from mobex.errors import UsageError
from mobex.registry import layout, publish
from mobex.registry.server import read_token_file

from .conftest import TOKEN

BUNDLE = "models/digits/versions/1.0.0/digits-1.0.0-android.zip"
POINTER = "models/digits/channels/beta/android.json"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, bundle_factory, keypair) -> Path:
    reg = tmp_path_factory.mktemp("served") / "reg"
    publish.publish(bundle_factory("1.0.0"), reg, "beta", keypair[0])
    return reg


@pytest.fixture(scope="module")
def shared_server(registry: Path):
    from mobex.registry.server import RegistryServer

    with RegistryServer(registry) as server:
        yield server


def request(server, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, bytes]:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_serves_layout_files_with_types_and_caching(server_factory, registry: Path) -> None:
    server = server_factory(registry)
    status, headers, body = request(server, "/" + BUNDLE)
    assert status == 200 and body == (registry / BUNDLE).read_bytes()
    assert headers["content-type"] == "application/zip"
    assert headers["cache-control"] == "public, max-age=31536000, immutable"
    assert headers["content-length"] == str(len(body)) and headers["accept-ranges"] == "bytes"
    assert headers["x-content-type-options"] == "nosniff"
    status, headers, body = request(server, "/" + POINTER)
    assert status == 200 and body == (registry / POINTER).read_bytes()
    assert headers["content-type"] == "application/json" and headers["cache-control"] == "public, max-age=60"
    assert request(server, "/trust/1.root.json")[1]["cache-control"].endswith("immutable")
    assert request(server, "/index.json")[0] == 200
    status, headers, body = request(server, "/" + BUNDLE, method="HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == str((registry / BUNDLE).stat().st_size)


def test_etag_and_if_none_match(server_factory, registry: Path) -> None:
    server = server_factory(registry)
    _, headers, _ = request(server, "/" + POINTER)
    etag = headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    status, headers, body = request(server, "/" + POINTER, headers={"If-None-Match": etag})
    assert status == 304 and body == b"" and headers["etag"] == etag
    assert request(server, "/" + POINTER, headers={"If-None-Match": f'"nope", W/{etag}'})[0] == 304
    assert request(server, "/" + POINTER, headers={"If-None-Match": '"other"'})[0] == 200


def test_range_requests(server_factory, registry: Path) -> None:
    server = server_factory(registry)
    data = (registry / BUNDLE).read_bytes()
    size = len(data)
    status, headers, body = request(server, "/" + BUNDLE, headers={"Range": "bytes=10-19"})
    assert status == 206 and body == data[10:20] and headers["content-range"] == f"bytes 10-19/{size}"
    status, _, body = request(server, "/" + BUNDLE, headers={"Range": "bytes=-7"})
    assert status == 206 and body == data[-7:]
    status, _, body = request(server, "/" + BUNDLE, headers={"Range": f"bytes={size - 3}-"})
    assert status == 206 and body == data[-3:]
    status, _, body = request(server, "/" + BUNDLE, headers={"Range": f"bytes=5-{size + 100}"})
    assert status == 206 and body == data[5:]
    status, headers, _ = request(server, "/" + BUNDLE, headers={"Range": f"bytes={size}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{size}"
    assert request(server, "/" + BUNDLE, headers={"Range": "bytes=0-1,5-6"})[2] == data  # several: whole file
    assert request(server, "/" + BUNDLE, headers={"Range": "pages=1-2"})[0] == 200
    etag = request(server, "/" + BUNDLE)[1]["etag"]
    status, _, body = request(server, "/" + BUNDLE, headers={"Range": "bytes=0-3", "If-Range": etag})
    assert status == 206 and body == data[:4]
    status, _, body = request(server, "/" + BUNDLE, headers={"Range": "bytes=0-3", "If-Range": '"stale"'})
    assert status == 200 and body == data


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/models/",
        "/../../etc/passwd",
        "/models/digits/../../trust/root.json",
        "/models/%2e%2e/%2e%2e/etc/passwd",
        "/%2E%2E/index.json",
        "/models/digits/versions/1.0.0/..%2fdigits-1.0.0-android.zip",
        "/models//digits/channels/beta/android.json",
        "/index.json/",
        "/.mobex-registry.lock",
        "/.mobex-journal.json",
        "/trust/../index.json",
        "/index.json%00",
        "/models\\digits",
        "http://example.com/index.json",
        "/" + "a" * 5000,
    ],
)
def test_path_traversal_and_non_layout_paths_are_not_served(shared_server, path: str) -> None:
    status, _, body = request(shared_server, path)
    assert status == 404, (path, body)


def test_query_strings_are_ignored_and_symlinks_refused(server_factory, tmp_path: Path, registry: Path) -> None:
    server = server_factory(registry)
    assert request(server, "/index.json?x=1")[0] == 200
    reg = tmp_path / "reg"
    (reg / "models/evil/channels/beta").mkdir(parents=True)
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": true}')
    (reg / "models/evil/channels/beta/android.json").symlink_to(secret)
    (reg / "models/linked").symlink_to(registry / "models/digits", target_is_directory=True)
    other = server_factory(reg)
    assert request(other, "/models/evil/channels/beta/android.json")[0] == 403
    assert request(other, "/models/linked/channels/beta/android.json")[0] == 403


def test_only_get_and_head(server_factory, registry: Path) -> None:
    server = server_factory(registry)
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = request(server, "/index.json", method=method)
        assert status == 405 and headers["allow"] == "GET, HEAD"
    assert (registry / "index.json").exists()


def test_bearer_token(server_factory, registry: Path) -> None:
    server = server_factory(registry, token=TOKEN)
    status, headers, body = request(server, "/index.json")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer") and b"token" in body
    assert request(server, "/index.json", headers={"Authorization": "Bearer wrong-token-of-same-size!!"})[0] == 401
    assert request(server, "/index.json", headers={"Authorization": f"Basic {TOKEN}"})[0] == 401
    assert request(server, "/index.json", headers={"Authorization": f"Bearer {TOKEN}x"})[0] == 401
    assert request(server, "/nothing-here", headers={})[0] == 401  # no hint about what exists
    status, headers, _ = request(server, "/index.json", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and headers["cache-control"].startswith("private")


def test_concurrent_clients_with_keep_alive(server_factory, registry: Path) -> None:
    server = server_factory(registry, token=TOKEN)
    expected = {p: (registry / p).read_bytes() for p in (BUNDLE, POINTER, "index.json", layout.ROOT_FILE)}
    errors: list[str] = []
    host, port = server.server_address[:2]

    def client(i: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            for j in range(12):  # bounded: 16 clients x 12 requests on one connection each
                rel = list(expected)[(i + j) % len(expected)]
                headers = {"Authorization": f"Bearer {TOKEN}"}
                if j % 3 == 2:
                    headers["Range"] = "bytes=0-9"
                conn.request("GET", "/" + rel, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                want = expected[rel][:10] if j % 3 == 2 else expected[rel]
                if resp.status not in (200, 206) or body != want:
                    errors.append(f"client {i} request {j}: {resp.status} {rel}")
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(f"client {i}: {exc!r}")
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:5]


def test_replaced_file_gets_a_new_etag(server_factory, tmp_path: Path, bundle_factory, keypair) -> None:
    reg = tmp_path / "reg"
    publish.publish(bundle_factory("1.0.0"), reg, "beta", keypair[0])
    server = server_factory(reg)
    etag1 = request(server, "/" + POINTER)[1]["etag"]
    publish.refresh("digits", reg, "beta", keypair[0])
    status, headers, body = request(server, "/" + POINTER, headers={"If-None-Match": etag1})
    assert status == 200 and headers["etag"] != etag1 and body == (reg / POINTER).read_bytes()


def test_token_file_rules(tmp_path: Path) -> None:
    good = tmp_path / "token"
    good.write_text(TOKEN + "\n")
    assert read_token_file(good) == TOKEN
    for bad in ("", "short", "has space inside the token", "tøken-with-non-ascii-chars"):
        path = tmp_path / "bad"
        path.write_text(bad, encoding="utf-8")
        with pytest.raises(UsageError):
            read_token_file(path)
    with pytest.raises(UsageError):
        read_token_file(tmp_path / "missing")
    assert os.path.exists(good)
