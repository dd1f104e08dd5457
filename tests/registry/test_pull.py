from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mobex.bundle.keys import generate_keypair, load_private_key
from mobex.bundle.verify import build_bundle
from mobex.errors import MobexError, UsageError, VerificationError
from mobex.registry import dsse, fetch, layout, publish, trust
from mobex.registry.pointer import new_pointer
from mobex.registry.pull import pull, read_state

from .conftest import TOKEN, make_manifest, tree_snapshot, write_staging

STABLE = layout.pointer_path("digits", "stable", "android")


@pytest.fixture
def reg(tmp_path: Path, bundle_factory, keypair) -> Path:
    """digits 1.0.0 then 1.1.0 published to stable (single key)."""
    reg = tmp_path / "reg"
    publish.publish(bundle_factory("1.0.0"), reg, "stable", keypair[0])
    publish.publish(bundle_factory("1.1.0"), reg, "stable", keypair[0])
    return reg


def installed_files(out: Path) -> dict[str, bytes]:
    return tree_snapshot((out / "current").resolve())


def test_pull_from_a_directory_installs_and_keeps_the_previous(tmp_path: Path, reg: Path, bundle_factory, keypair):
    out = tmp_path / "out"
    first = pull("digits", reg, "stable", "android", keypair[1], out)
    assert (first.status, first.version, first.sequence, first.previous_version) == ("installed", "1.1.0", 2, None)
    manifest = json.loads((out / "current" / "manifest.json").read_bytes())
    assert (manifest["name"], manifest["version"]) == ("digits", "1.1.0")
    assert (out / "current" / "signature.sigstore.json").is_file()
    again = pull("digits", reg, "stable", "android", keypair[1], out)
    assert again.status == "up-to-date" and again.path == first.path
    publish.rollback("digits", reg, "stable", "1.0.0", keypair[0])
    back = pull("digits", reg, "stable", "android", keypair[1], out)
    assert (back.status, back.version, back.downgrade, back.previous_version) == ("installed", "1.0.0", True, "1.1.0")
    assert json.loads((out / "previous" / "manifest.json").read_bytes())["version"] == "1.1.0"
    state = read_state(out)
    assert state["installed"]["version"] == "1.0.0" and state["previous"]["version"] == "1.1.0"
    assert sorted(p.name for p in (out / "bundles").iterdir()) == sorted({Path(back.path).name, Path(first.path).name})
    assert not (out / ".mobex" / "tmp").exists()


def test_pull_over_http_with_token_and_etag(tmp_path: Path, reg: Path, keypair, server_factory) -> None:
    server = server_factory(reg, token=TOKEN)
    out = tmp_path / "out"
    with pytest.raises(UsageError, match="HTTP 401") as info:
        pull("digits", server.url, "stable", "android", keypair[1], out)
    assert "--token" in (info.value.hint or "")
    with pytest.raises(UsageError, match="HTTP 401"):
        pull("digits", server.url, "stable", "android", keypair[1], out, token="wrong-token-wrong-token")
    result = pull("digits", server.url + "/", "stable", "android", keypair[1], out, token=TOKEN)
    assert result.status == "installed" and result.version == "1.1.0"
    etag = read_state(out)["pointer_cache"]["digits/stable/android"]["etag"]
    src = fetch.HttpSource(server.url, TOKEN)
    assert src.get(STABLE, 1 << 20, etag=etag).not_modified  # the server answers 304 to the stored ETag
    assert pull("digits", server.url, "stable", "android", keypair[1], out, token=TOKEN).status == "up-to-date"
    with pytest.raises(UsageError, match="has no beta pointer"):
        pull("digits", server.url, "beta", "android", keypair[1], out, token=TOKEN)


def test_replayed_old_pointer_is_refused_and_nothing_changes(tmp_path: Path, reg: Path, keypair) -> None:
    old_pointer = (reg / STABLE).read_bytes()  # sequence 2, 1.1.0
    out = tmp_path / "out"
    pull("digits", reg, "stable", "android", keypair[1], out)
    publish.rollback("digits", reg, "stable", "1.0.0", keypair[0])  # sequence 3
    assert pull("digits", reg, "stable", "android", keypair[1], out).version == "1.0.0"
    before = tree_snapshot(out)
    (reg / STABLE).write_bytes(old_pointer)  # the server replays the older, validly signed pointer
    with pytest.raises(VerificationError, match="replayed old pointer; keeping 1.0.0"):
        pull("digits", reg, "stable", "android", keypair[1], out)
    assert tree_snapshot(out) == before


def test_expired_pointer_keeps_the_installed_bundle(tmp_path: Path, reg: Path, keypair) -> None:
    out = tmp_path / "out"
    pull("digits", reg, "stable", "android", keypair[1], out)
    later = datetime.now(UTC) + timedelta(days=15)
    with pytest.raises(VerificationError, match="expired at .*keeping 1.1.0"):
        pull("digits", reg, "stable", "android", keypair[1], out, now=later)
    within_skew = datetime.now(UTC) + timedelta(days=14, minutes=4)
    assert pull("digits", reg, "stable", "android", keypair[1], out, now=within_skew).status == "up-to-date"


def test_swapped_channel_or_platform_pointer_is_refused(tmp_path: Path, reg: Path, bundle_factory, keypair) -> None:
    publish.publish(bundle_factory("2.0.0"), reg, "beta", keypair[0])
    publish.publish(bundle_factory("1.1.0", "ios"), reg, "stable", keypair[0])
    stable = (reg / STABLE).read_bytes()
    shutil.copyfile(reg / layout.pointer_path("digits", "beta", "android"), reg / STABLE)
    with pytest.raises(VerificationError, match="for digits/beta/android, not digits/stable/android"):
        pull("digits", reg, "stable", "android", keypair[1], tmp_path / "a")
    (reg / STABLE).write_bytes(stable)
    shutil.copyfile(reg / layout.pointer_path("digits", "stable", "ios"), reg / STABLE)
    with pytest.raises(VerificationError, match="for digits/stable/ios"):
        pull("digits", reg, "stable", "android", keypair[1], tmp_path / "b")
    assert not (tmp_path / "a" / "current").exists() and not (tmp_path / "b" / "current").exists()


def test_tampered_bundle_in_the_registry_is_refused(tmp_path: Path, reg: Path, keypair) -> None:
    zip_path = reg / layout.bundle_path("digits", "1.1.0", "android")
    data = bytearray(zip_path.read_bytes())
    data[len(data) // 2] ^= 1
    zip_path.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="the signed pointer says"):
        pull("digits", reg, "stable", "android", keypair[1], tmp_path / "out")
    zip_path.write_bytes(bytes(data) + b"more")  # endless data: refused at the signed size
    with pytest.raises(VerificationError, match="more than the .* bytes the signed pointer promised"):
        pull("digits", reg, "stable", "android", keypair[1], tmp_path / "out")
    assert not (tmp_path / "out" / "current").exists()


def sign_pointer_over(reg: Path, zip_rel: str, version: str, signers, sequence: int, downgrade: bool = False) -> None:
    data = (reg / zip_rel).read_bytes()
    ptr = new_pointer(
        model="digits", channel="stable", platform="android", sequence=sequence, version=version,
        sha256=hashlib.sha256(data).hexdigest(), size=len(data), now=datetime.now(UTC),
        expires_in=timedelta(days=1), downgrade=downgrade,
    )  # fmt: skip
    (reg / STABLE).write_bytes(dsse.sign(dsse.POINTER_TYPE, ptr.to_payload(), signers))


@pytest.fixture
def split(tmp_path: Path, bundle_factory) -> tuple[Path, dict]:
    """A registry with separate root, release and channel keys; 1.0.0 and 1.1.0 on stable."""
    keys = {n: generate_keypair(tmp_path / "keys" / f"{n}.pem") for n in ("root", "release", "channel", "thief")}
    reg = tmp_path / "split"
    trust.init_root(reg, keys["root"][0], release_keys=[keys["release"][1]], channel_keys=[keys["channel"][1]])
    for version in ("1.0.0", "1.1.0"):
        publish.publish(bundle_factory(version, key=keys["release"][0]), reg, "stable", keys["channel"][0])
    return reg, keys


def test_a_stolen_channel_key_cannot_ship_new_bytes_or_a_silent_downgrade(tmp_path: Path, split) -> None:
    reg, keys = split
    out = tmp_path / "out"
    assert pull("digits", reg, "stable", "android", keys["root"][1], out).version == "1.1.0"
    channel = load_private_key(keys["channel"][0])
    # new bytes: a bundle signed by the thief, behind a pointer the stolen channel key signs
    evil_rel = layout.bundle_path("digits", "1.2.0", "android")
    (reg / evil_rel).parent.mkdir(parents=True)
    build_bundle(
        write_staging(tmp_path / "thief-staging", "digits", "1.2.0", "android"), make_manifest(version="1.2.0"),
        reg / evil_rel, keys["thief"][0], source_date_epoch=None,
    )  # fmt: skip
    sign_pointer_over(reg, evil_rel, "1.2.0", [channel], sequence=10)
    with pytest.raises(VerificationError, match="not a release key"):
        pull("digits", reg, "stable", "android", keys["root"][1], out)
    # a silent downgrade, and a flagged one without the release key's signature
    old_rel = layout.bundle_path("digits", "1.0.0", "android")
    sign_pointer_over(reg, old_rel, "1.0.0", [channel], sequence=11)
    with pytest.raises(VerificationError, match="without being marked as a downgrade"):
        pull("digits", reg, "stable", "android", keys["root"][1], out)
    sign_pointer_over(reg, old_rel, "1.0.0", [channel], sequence=12, downgrade=True)
    with pytest.raises(VerificationError, match="needs the release key"):
        pull("digits", reg, "stable", "android", keys["root"][1], out)
    assert json.loads((out / "current" / "manifest.json").read_bytes())["version"] == "1.1.0"
    # the real rollback (release + channel signatures) is accepted
    publish.rollback("digits", reg, "stable", "1.0.0", keys["release"][0], channel_key=keys["channel"][0])
    assert pull("digits", reg, "stable", "android", keys["root"][1], out).version == "1.0.0"


def test_wrong_pinned_key_and_a_private_key_as_pin(tmp_path: Path, reg: Path, keypair, other_keypair) -> None:
    with pytest.raises(VerificationError, match="not signed by the pinned key .*root key is another one"):
        pull("digits", reg, "stable", "android", other_keypair[1], tmp_path / "out")
    with pytest.raises(UsageError, match="holds a private key"):
        pull("digits", reg, "stable", "android", keypair[0], tmp_path / "out")


def test_channel_key_rotation_resets_the_sequence_ratchet(tmp_path: Path, split, bundle_factory) -> None:
    reg, keys = split
    out = tmp_path / "out"
    pull("digits", reg, "stable", "android", keys["root"][1], out)
    channel = load_private_key(keys["channel"][0])
    latest = layout.bundle_path("digits", "1.1.0", "android")
    sign_pointer_over(reg, latest, "1.1.0", [channel], sequence=1_000_000)  # fast-forward by a stolen key
    pull("digits", reg, "stable", "android", keys["root"][1], out)
    ci2 = generate_keypair(tmp_path / "keys" / "ci2.pem")
    trust.rotate_root(
        reg, [keys["root"][0]], root_keys=[keys["root"][1]], release_keys=[keys["release"][1]], channel_keys=[ci2[1]]
    )
    (reg / STABLE).unlink()
    publish.publish(bundle_factory("1.2.0", key=keys["release"][0]), reg, "stable", ci2[0])  # sequence 1
    result = pull("digits", reg, "stable", "android", keys["root"][1], out)
    assert (result.version, result.sequence, result.root_version) == ("1.2.0", 1, 2)
    # the old channel key is no longer trusted, even with a huge sequence
    sign_pointer_over(reg, latest, "1.1.0", [channel], sequence=2_000_000)
    with pytest.raises(VerificationError, match="not signed by a trusted key"):
        pull("digits", reg, "stable", "android", keys["root"][1], out)
    assert len(read_state(out)["sequences"]) == 2  # one ratchet per channel key id


def test_size_cap_and_out_folder_checks(tmp_path: Path, reg: Path, keypair) -> None:
    with pytest.raises(VerificationError, match="over the 100 cap"):
        pull("digits", reg, "stable", "android", keypair[1], tmp_path / "out", max_bundle_bytes=100)
    squatted = tmp_path / "squatted"
    (squatted / "current").mkdir(parents=True)
    with pytest.raises(UsageError, match="not a symlink made by mobex pull"):
        pull("digits", reg, "stable", "android", keypair[1], squatted)
    with pytest.raises(UsageError, match="--token is for HTTP"):
        pull("digits", reg, "stable", "android", keypair[1], tmp_path / "o", token=TOKEN)
    with pytest.raises(UsageError, match="only http"):
        pull("digits", "ftp://example.com/reg", "stable", "android", keypair[1], tmp_path / "o")
    with pytest.raises(UsageError, match="model name"):
        pull("../digits", reg, "stable", "android", keypair[1], tmp_path / "o")


def test_redirects_are_never_followed(tmp_path: Path, keypair) -> None:
    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(MobexError, match="redirect"):
            pull("digits", url, "stable", "android", keypair[1], tmp_path / "out", token=TOKEN)
    finally:
        server.shutdown()
        server.server_close()


def test_unreachable_server_is_a_clean_error(tmp_path: Path, keypair) -> None:
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(fetch.RegistryUnavailable, match="cannot reach"):
        pull("digits", f"http://127.0.0.1:{port}", "stable", "android", keypair[1], tmp_path / "out")
