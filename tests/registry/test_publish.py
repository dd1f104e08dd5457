from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mobex.bundle.keys import generate_keypair, load_private_key, load_public_key
from mobex.errors import UsageError, VerificationError
from mobex.registry import dsse, index, layout, publish, trust, txn
from mobex.registry.pointer import Pointer

from .conftest import ROOT, tree_snapshot

SKIP = (layout.TMP_DIR, layout.LOCK_FILE)


def pointer_of(reg: Path, channel: str = "beta", platform: str = "android", model: str = "digits") -> Pointer:
    data = (reg / layout.pointer_path(model, channel, platform)).read_bytes()
    return Pointer.from_payload(dsse.parse(data).payload)


def signers_of(reg: Path, channel: str, keys: list[Path]) -> set[str]:
    data = (reg / layout.pointer_path("digits", channel, "android")).read_bytes()
    found = set()
    for key in keys:
        pub = load_public_key(key)
        try:
            dsse.verify(data, dsse.POINTER_TYPE, {dsse.keyid_of(pub): pub})
            found.add(key.name)
        except VerificationError:
            pass
    return found


def test_first_publish_creates_a_single_key_registry(tmp_path: Path, bundle_factory, keypair) -> None:
    reg = tmp_path / "reg"
    result = publish.publish(bundle_factory("1.0.0"), reg, "beta", keypair[0])
    assert result.pointer.moved and result.pointer.sequence == 1
    assert (reg / result.bundle_path).read_bytes() == bundle_factory("1.0.0").read_bytes()
    files = set(tree_snapshot(reg, skip=SKIP))
    assert files == {
        "trust/1.root.json", "trust/root.json", "index.json",
        "models/digits/channels/beta/android.json", "models/digits/versions/1.0.0/digits-1.0.0-android.zip",
    }  # fmt: skip
    root = trust.load_registry_root(reg)
    kid = dsse.keyid_of(load_public_key(keypair[1]))
    assert all(root.roles[r].keyids == (kid,) for r in trust.ROLES)
    ptr = pointer_of(reg)
    assert (ptr.version, ptr.bundle.sha256, ptr.bundle.size) == ("1.0.0", result.sha256, result.size)
    idx = index.verify((reg / "index.json").read_bytes(), root.role_keys("channel"))
    assert idx["models"]["digits"]["versions"]["1.0.0"]["android"]["sha256"] == result.sha256
    assert idx["models"]["digits"]["channels"]["beta"]["android"]["sequence"] == 1
    assert not (reg / layout.TMP_DIR).exists() and not (reg / layout.JOURNAL_FILE).exists()


def test_versions_are_immutable_and_channels_never_go_back(tmp_path: Path, bundle_factory, keypair) -> None:
    reg = tmp_path / "reg"
    publish.publish(bundle_factory("1.1.0"), reg, "beta", keypair[0])
    before = tree_snapshot(reg, skip=SKIP)
    with pytest.raises(UsageError, match="already in the registry"):
        publish.publish(bundle_factory("1.1.0"), reg, "beta", keypair[0])
    assert tree_snapshot(reg, skip=SKIP) == before
    ios = publish.publish(bundle_factory("1.1.0", "ios"), reg, "beta", keypair[0])  # same version, other platform
    assert ios.pointer.moved and pointer_of(reg, platform="ios").version == "1.1.0"
    older = publish.publish(bundle_factory("1.0.5"), reg, "beta", keypair[0])
    assert not older.pointer.moved and "stays" in older.pointer.note
    assert pointer_of(reg).version == "1.1.0" and pointer_of(reg).sequence == 1
    assert "1.0.5" in json.loads(dsse.parse((reg / "index.json").read_bytes()).payload)["models"]["digits"]["versions"]


def test_promote_rollback_refresh(tmp_path: Path, bundle_factory, keypair) -> None:
    reg = tmp_path / "reg"
    publish.publish(bundle_factory("1.0.0"), reg, "beta", keypair[0])
    publish.publish(bundle_factory("1.1.0"), reg, "beta", keypair[0])
    [change] = publish.promote("digits", reg, "beta", "stable", keypair[0])
    assert (change.version, change.sequence, change.previous_version) == ("1.1.0", 1, None)
    assert pointer_of(reg, "stable").bundle == pointer_of(reg, "beta").bundle
    publish.rollback("digits", reg, "beta", "1.0.0", keypair[0])  # beta now older than stable
    with pytest.raises(UsageError, match="newer than beta") as info:
        publish.promote("digits", reg, "beta", "stable", keypair[0])
    assert "mobex rollback" in (info.value.hint or "")
    [rb] = publish.rollback("digits", reg, "stable", "1.0.0", keypair[0])
    assert rb.downgrade and rb.sequence == 2 and rb.previous_version == "1.1.0"
    ptr = pointer_of(reg, "stable")
    assert ptr.downgrade and ptr.version == "1.0.0" and ptr.sequence == 2
    [fresh] = publish.refresh("digits", reg, "stable", keypair[0])
    assert fresh.sequence == 3 and fresh.downgrade and pointer_of(reg, "stable").version == "1.0.0"
    with pytest.raises(UsageError, match="never published"):
        publish.rollback("digits", reg, "stable", "0.9.0", keypair[0])
    with pytest.raises(UsageError, match="no stable pointer"):
        publish.rollback("other", reg, "stable", "1.0.0", keypair[0])


def test_separate_keys_release_signs_downgrades(tmp_path: Path, bundle_factory) -> None:
    keys = {n: generate_keypair(tmp_path / "keys" / f"{n}.pem") for n in ("root", "release", "channel")}
    reg = tmp_path / "reg"
    trust.init_root(reg, keys["root"][0], release_keys=[keys["release"][1]], channel_keys=[keys["channel"][1]])
    v1 = bundle_factory("1.0.0", key=keys["release"][0])
    v2 = bundle_factory("1.1.0", key=keys["release"][0])
    with pytest.raises(UsageError, match="not a channel key"):
        publish.publish(v1, reg, "stable", keys["release"][0])
    publish.publish(v1, reg, "stable", keys["channel"][0])
    publish.publish(v2, reg, "stable", keys["channel"][0])
    with pytest.raises(UsageError, match="not a release key"):
        publish.rollback("digits", reg, "stable", "1.0.0", keys["channel"][0])
    with pytest.raises(UsageError, match="not a channel key"):
        publish.rollback("digits", reg, "stable", "1.0.0", keys["release"][0])  # channel key missing
    publish.rollback("digits", reg, "stable", "1.0.0", keys["release"][0], channel_key=keys["channel"][0])
    assert signers_of(reg, "stable", [keys[n][1] for n in keys]) == {"release.pub.pem", "channel.pub.pem"}
    with pytest.raises(UsageError, match="needs a release key"):
        publish.refresh("digits", reg, "stable", keys["channel"][0])
    publish.refresh("digits", reg, "stable", keys["channel"][0], release_key=keys["release"][0])
    assert pointer_of(reg, "stable").downgrade


def test_bundles_not_signed_by_a_release_key_are_refused(tmp_path: Path, bundle_factory, keypair, other_keypair):
    reg = tmp_path / "reg"
    publish.publish(bundle_factory("1.0.0"), reg, "beta", keypair[0])
    before = tree_snapshot(reg, skip=SKIP)
    with pytest.raises(VerificationError, match="refusing to publish"):
        publish.publish(bundle_factory("1.1.0", key=other_keypair[0]), reg, "beta", keypair[0])
    assert tree_snapshot(reg, skip=SKIP) == before


def test_symlinks_in_the_registry_are_refused(tmp_path: Path, bundle_factory, keypair) -> None:
    reg = tmp_path / "reg"
    publish.publish(bundle_factory("1.0.0"), reg, "beta", keypair[0])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (reg / "models/digits/versions/1.1.0").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(VerificationError, match="symlink"):
        publish.publish(bundle_factory("1.1.0"), reg, "beta", keypair[0])
    assert list(elsewhere.iterdir()) == []


def test_eight_concurrent_publishes_leave_a_consistent_registry(tmp_path: Path, bundle_factory, keypair) -> None:
    reg = tmp_path / "reg"
    versions = [f"1.0.{i}" for i in range(8)]
    bundles = [bundle_factory(v) for v in versions]
    ctx = multiprocessing.get_context("forkserver")  # fresh processes; imports paid once, in the server
    ctx.set_forkserver_preload(["mobex.registry.publish", "mobex.bundle.verify", "model_signing.verifying"])
    with ctx.Pool(8) as pool:
        results = pool.starmap(publish.publish, [(b, reg, "beta", keypair[0]) for b in bundles], chunksize=1)
    assert sorted(r.version for r in results) == versions
    moved = [r for r in results if r.pointer.moved]
    ptr = pointer_of(reg)
    assert ptr.version == "1.0.7" and ptr.sequence == len(moved)
    assert sorted(r.pointer.sequence for r in moved) == list(range(1, len(moved) + 1))  # no sequence used twice
    payload = json.loads(dsse.parse((reg / "index.json").read_bytes()).payload)
    assert sorted(payload["models"]["digits"]["versions"]) == versions
    assert payload == index.rebuild(reg)  # the index says exactly what is on disk
    for r in results:
        assert (reg / r.bundle_path).read_bytes() == bundles[versions.index(r.version)].read_bytes()
    assert not (reg / layout.JOURNAL_FILE).exists() and not (reg / layout.TMP_DIR).exists()


KILLER = """
import os, signal, sys
from pathlib import Path
n, where = int(sys.argv[1]), sys.argv[2]
count = [0]
def killer(orig):
    def wrapped(*args, **kwargs):
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return orig(*args, **kwargs)
    return wrapped
if where == "rename":
    os.replace = killer(os.replace)
    os.link = killer(os.link)
else:
    import mobex.registry.fsutil as fsutil
    fsutil.write_temp = killer(fsutil.write_temp)
from mobex.registry.publish import publish
publish(Path(sys.argv[3]), Path(sys.argv[4]), "beta", Path(sys.argv[5]))
print("finished")
"""


def test_a_publish_killed_mid_way_leaves_the_registry_as_it_was_or_rolls_forward(
    tmp_path: Path, bundle_factory, keypair
) -> None:
    import shutil

    template = tmp_path / "template"
    publish.publish(bundle_factory("1.0.0"), template, "beta", keypair[0])
    before = tree_snapshot(template, skip=SKIP)
    new = bundle_factory("1.1.0")
    kill_points = [("stage", 2), ("rename", 1), ("rename", 2), ("rename", 4)]  # staging, journal, bundle, index
    procs = []
    for where, n in kill_points:
        reg = tmp_path / f"reg-{where}-{n}"
        shutil.copytree(template, reg, symlinks=True)
        cmd = [sys.executable, "-c", KILLER, str(n), where, str(new), str(reg), str(keypair[0])]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs.append((reg, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    outcomes = []
    for reg, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == -9, (out, err)  # really killed, not finished
        if (reg / layout.JOURNAL_FILE).exists():  # killed after the commit point
            assert txn.recover(reg)
            outcomes.append("rolled forward")
            assert pointer_of(reg).version == "1.1.0"
            assert tree_snapshot(reg, skip=SKIP).keys() == before.keys() | {
                "models/digits/versions/1.1.0/digits-1.1.0-android.zip"
            }
            with pytest.raises(UsageError, match="already in the registry"):
                publish.publish(new, reg, "beta", keypair[0])
        else:  # killed before it: nothing changed
            assert tree_snapshot(reg, skip=SKIP) == before
            outcomes.append("as it was")
            publish.publish(new, reg, "beta", keypair[0])  # and a retry works
        ptr = pointer_of(reg)
        assert (reg / ptr.bundle.path).stat().st_size == ptr.bundle.size
        payload = json.loads(dsse.parse((reg / "index.json").read_bytes()).payload)
        assert payload == index.rebuild(reg)
        assert not (reg / layout.TMP_DIR).exists() or not any((reg / layout.TMP_DIR).iterdir())
    assert {"as it was", "rolled forward"} <= set(outcomes), outcomes


def test_lock_waits_for_the_holder(tmp_path: Path) -> None:
    from mobex.registry import fsutil

    with fsutil.locked(tmp_path):
        with pytest.raises(UsageError, match="locked by another process"):
            # a second descriptor on the same file conflicts like another process would
            with fsutil.locked(tmp_path, timeout=0.1):
                pass
    with fsutil.locked(tmp_path, timeout=0.1):
        pass


def test_channel_key_check_before_any_write(tmp_path: Path, bundle_factory, keypair, other_keypair) -> None:
    reg = tmp_path / "reg"
    publish.publish(bundle_factory("1.0.0"), reg, "beta", keypair[0])
    before = tree_snapshot(reg, skip=SKIP)
    other = load_private_key(other_keypair[0])
    assert dsse.keyid_of(other) not in trust.load_registry_root(reg).roles["channel"].keyids
    with pytest.raises(VerificationError):  # the bundle's signer is not a release key of this registry
        publish.publish(bundle_factory("1.1.0", key=other_keypair[0]), reg, "beta", other_keypair[0])
    with pytest.raises(UsageError, match="not a channel key"):
        publish.promote("digits", reg, "beta", "stable", other_keypair[0])
    assert tree_snapshot(reg, skip=SKIP) == before
