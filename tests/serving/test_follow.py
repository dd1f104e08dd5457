"""Following a registry channel: new versions are verified and swapped in under load; bad ones keep the old model."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mobex.bundle.archive import safe_extract
from mobex.bundle.verify import build_bundle, verify_bundle
from mobex.registry import layout
from mobex.registry.publish import publish
from mobex.registry.server import RegistryServer

from .conftest import Client


def rebundle(built, version: str, out_dir: Path, *, model_bytes: bytes | None = None) -> Path:  # noqa: ANN001
    """The built bundle re-released as `version` (same model, or other model bytes), signed with the release key."""
    manifest = verify_bundle(built.bundle, built.public_key)
    staging = out_dir / f"staging-{version}"
    safe_extract(built.bundle, staging)
    for name in ("manifest.json", "signature.sigstore.json"):
        (staging / name).unlink()
    if model_bytes is not None:
        (staging / manifest.model["path"]).write_bytes(model_bytes)
    out = out_dir / f"{manifest.name}-{version}-android.zip"
    return build_bundle(staging, manifest.model_copy(update={"version": version}), out, built.private_key,
                        source_date_epoch=1_700_000_000)  # fmt: skip


class Hammer:
    """Clients sending predictions in a loop while the test swaps models; records versions and failures."""

    def __init__(self, url: str, image: np.ndarray, clients: int = 4) -> None:
        self.url, self.image = url, image.tolist()
        self.versions: list[list[str]] = [[] for _ in range(clients)]
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,)) for k in range(clients)]

    def _run(self, k: int) -> None:
        c = Client(self.url)
        try:
            while not self._stop.is_set():
                reply = c.predict("digits-cnn", {"image": self.image})
                if reply.status != 200:
                    self.failures.append(f"{reply.status} {reply.body[:200]!r}")
                else:
                    self.versions[k].append(reply.json()["model"]["version"])
        except Exception as exc:  # noqa: BLE001
            self.failures.append(repr(exc))
        finally:
            c.close()

    def __enter__(self) -> Hammer:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


@pytest.fixture
def registry(digits, tmp_path: Path) -> Path:
    reg = tmp_path / "registry"
    publish(digits.bundle, reg, "stable", digits.private_key)
    return reg


def test_channel_updates_swap_under_load_and_bad_bundles_keep_the_old_model(digits, registry, tmp_path) -> None:
    from mobex.serving.follow import ChannelFollower, ChannelSpec
    from mobex.serving.launch import load_model
    from mobex.serving.server import ModelServer
    from mobex.serving.service import ModelService, ServeOptions

    from .conftest import TOKEN

    options = ServeOptions(token=TOKEN, workers=2)
    spec = ChannelSpec(str(registry), "digits-cnn", "stable", "android", digits.public_key, tmp_path / "state")
    follower = ChannelFollower(spec, lambda b: load_model(b, options))
    service = ModelService(follower.initial(), options)
    image = digits.validation()["image"][:1]
    with ModelServer(service) as server, Hammer(server.url, image) as hammer:
        assert follower.check_once(service) == "up to date"
        publish(rebundle(digits, "1.1.0", tmp_path), registry, "stable", digits.private_key)
        time.sleep(0.3)
        assert follower.check_once(service) == "swapped 1.0.0 -> 1.1.0"
        time.sleep(0.3)
        # signed by the release key, but the model file is garbage: it does not load, 1.1.0 keeps serving
        publish(rebundle(digits, "1.2.0", tmp_path, model_bytes=b"TFL3" + bytes(4000)), registry, "stable",
                digits.private_key)  # fmt: skip
        assert follower.check_once(service).startswith("rejected:")
        assert follower.check_once(service) == "up to date (1.2.0 was rejected before)"
        # a bundle changed in the registry after publishing: its sha256 is not the signed pointer's
        publish(rebundle(digits, "1.3.0", tmp_path), registry, "stable", digits.private_key)
        zip_path = registry / layout.bundle_path("digits-cnn", "1.3.0", "android")
        data = bytearray(zip_path.read_bytes())
        data[len(data) // 2] ^= 1
        zip_path.write_bytes(bytes(data))
        assert "the signed pointer says" in follower.check_once(service)
        time.sleep(0.3)
        assert service.model.info.version == "1.1.0"
        publish(rebundle(digits, "1.4.0", tmp_path), registry, "stable", digits.private_key)
        assert follower.check_once(service) == "swapped 1.1.0 -> 1.4.0"
        time.sleep(0.3)
    assert not hammer.failures, hammer.failures[:5]
    seen = {v for per_client in hammer.versions for v in per_client}
    assert seen == {"1.0.0", "1.1.0", "1.4.0"}, seen
    for per_client in hammer.versions:  # each client sees versions only move forward
        assert per_client == sorted(per_client, key=lambda v: tuple(map(int, v.split("."))))
    text = service.metrics.exposition().decode()
    assert 'mobex_model_updates_total{result="swapped"} 2.0' in text
    assert 'mobex_model_updates_total{result="rejected"} 2.0' in text
    assert 'version="1.4.0"} 1.0' in text and 'version="1.1.0"} 1.0' not in text


def test_serve_model_follows_an_http_registry_by_polling(digits, registry, tmp_path, cli_server) -> None:
    with RegistryServer(registry, "127.0.0.1", 0) as reg_server:
        url = cli_server("--key", str(digits.public_key), "--from", reg_server.url, "--name", "digits-cnn",
                         "--channel", "stable", "--platform", "android", "--poll", "0.2")  # fmt: skip
        c = Client(url)
        image = digits.validation()["image"][:1].tolist()
        assert c.predict("digits-cnn", {"image": image}).json()["model"]["version"] == "1.0.0"
        publish(rebundle(digits, "1.1.0", tmp_path), registry, "stable", digits.private_key)
        deadline = time.monotonic() + 60
        version = "1.0.0"
        while version == "1.0.0" and time.monotonic() < deadline:
            reply = c.predict("digits-cnn", {"image": image})
            assert reply.status == 200, reply.body
            version = reply.json()["model"]["version"]
            time.sleep(0.05)
        assert version == "1.1.0"
        health = c.request("GET", "/healthz").json()
        assert health["model"]["version"] == "1.1.0" and re.fullmatch(r"[0-9a-f]{64}", health["model"]["sha256"])
        c.close()
