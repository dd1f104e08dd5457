"""The cache store: verified entries, corruption detection, atomic publishing under concurrency, LRU pruning."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from mobex.cache.store import CacheStore, auto_prune_limit, parse_size
from mobex.errors import UsageError

KEY = hashlib.sha256(b"one").hexdigest()
OTHER = hashlib.sha256(b"two").hexdigest()


def _model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "m.mlpackage"
    (folder / "Data").mkdir(parents=True)
    (folder / "Manifest.json").write_text('{"a": 1}')
    (folder / "Data" / "weight.bin").write_bytes(os.urandom(4096))
    return folder


def test_round_trip_of_payload_bytes_and_a_folder(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "cache")
    folder = _model_folder(tmp_path)
    payload = {"b": [1.5, None], "a": {"z": 1, "y": 2}}
    assert store.put("export", KEY, payload, {"model/m.mlpackage": folder, "extra.bin": b"\x00\x01"})
    got, files = store.get("export", KEY)
    assert got == payload and list(got) == ["b", "a"]  # key order kept (reports keep theirs)
    assert files["extra.bin"] == b"\x00\x01"
    assert files["model/m.mlpackage/Data/weight.bin"] == (folder / "Data" / "weight.bin").read_bytes()
    dest = tmp_path / "restored"
    got, files = store.get("export", KEY, restore_to=dest)
    assert files == {} and got == payload
    assert (dest / "model/m.mlpackage/Data/weight.bin").read_bytes() == (folder / "Data" / "weight.bin").read_bytes()
    assert store.get("export", OTHER) is None


def test_second_put_of_an_intact_entry_keeps_the_first(tmp_path: Path) -> None:
    store = CacheStore(tmp_path)
    assert store.put("validation", KEY, {"v": 1})
    assert not store.put("validation", KEY, {"v": 2})
    assert store.get("validation", KEY)[0] == {"v": 1}


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete", "edit payload", "garbage meta", "deep meta"])
def test_a_corrupted_entry_is_detected_removed_and_never_returned(tmp_path: Path, damage: str) -> None:
    store = CacheStore(tmp_path / "cache")
    folder = _model_folder(tmp_path)
    store.put("export", KEY, {"file": "m.mlpackage"}, {"model/m.mlpackage": folder})
    entry = store.entry_path("export", KEY)
    weight = entry / "files/model/m.mlpackage/Data/weight.bin"
    meta = entry / "meta.json"
    if damage == "flip a byte":
        data = bytearray(weight.read_bytes())
        data[100] ^= 0xFF
        weight.write_bytes(bytes(data))
    elif damage == "truncate":
        weight.write_bytes(weight.read_bytes()[:10])
    elif damage == "delete":
        weight.unlink()
    elif damage == "edit payload":
        doc = json.loads(meta.read_text())
        doc["payload"]["file"] = "other.mlpackage"
        meta.write_text(json.dumps(doc))
    elif damage == "deep meta":  # json.loads would raise RecursionError, which nothing would catch
        meta.write_text("[" * 200_000 + "]" * 200_000)
    else:
        meta.write_text("{not json")
    dest = tmp_path / "restored"
    assert store.get("export", KEY, restore_to=dest) is None
    assert not dest.exists(), "nothing of a corrupt entry is left where it was being restored"
    assert not entry.exists(), "the corrupt entry is removed"
    assert len(store.corrupted) == 1 and KEY[:16] in store.corrupted[0]
    assert store.put("export", KEY, {"file": "m.mlpackage"}, {"model/m.mlpackage": folder})  # rebuilt
    assert store.get("export", KEY) is not None


def test_entries_that_list_paths_outside_themselves_are_corrupt(tmp_path: Path) -> None:
    store = CacheStore(tmp_path)
    store.put("export", KEY, {"x": 1}, {"a.bin": b"a"})
    meta = store.entry_path("export", KEY) / "meta.json"
    doc = json.loads(meta.read_text())
    doc["files"] = {"../../../etc/passwd": doc["files"]["a.bin"]}
    meta.write_text(json.dumps(doc))
    assert store.get("export", KEY) is None


def test_symlinks_are_not_stored(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path)
    (folder / "link").symlink_to("/etc/hostname")
    with pytest.raises(ValueError, match="symlink"):
        CacheStore(tmp_path / "c").put("export", KEY, {}, {"m": folder})
    assert CacheStore(tmp_path / "c").get("export", KEY) is None


def _hammer(root: str, worker: int, rounds: int, queue) -> None:  # noqa: ANN001
    """Put and get the same keys as the other workers; prune now and then. Report anything not verified."""
    store = CacheStore(Path(root))
    problems = []
    for i in range(rounds):
        key = hashlib.sha256(str(i % 3).encode()).hexdigest()
        body = (str(i % 3) * 50_000).encode()
        store.put("export", key, {"i": i % 3}, {"model.bin": body})
        got = store.get("export", key)
        if got is not None and (got[0] != {"i": i % 3} or got[1]["model.bin"] != body):
            problems.append(f"worker {worker}: wrong content for {key[:8]}")
        if worker == 0 and i % 5 == 0:
            store.prune(60_000)
    problems.extend(store.corrupted)
    queue.put(problems)


def test_concurrent_writers_readers_and_pruning_never_see_a_partial_entry(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), w, 30, queue)) for w in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results == [[], [], [], []]
    assert not list((tmp_path / "builds/v1/tmp").glob("*")), "no temp folders left behind"


def test_prune_removes_least_recently_used_first(tmp_path: Path) -> None:
    store = CacheStore(tmp_path)
    keys = [hashlib.sha256(bytes([i])).hexdigest() for i in range(3)]
    for i, key in enumerate(keys):
        store.put("export", key, {"i": i}, {"f": b"x" * 10_000})
        os.utime(store.entry_path("export", key) / "meta.json", (time.time() - 100 + i, time.time() - 100 + i))
    (tmp_path / "data").mkdir()
    decoded = tmp_path / "data" / ("d" * 64 + ".npz")
    decoded.write_bytes(b"y" * 10_000)  # mobex.datasources' decoded data shares the folder and the bound
    os.utime(decoded, (time.time() - 1000, time.time() - 1000))
    store.get("export", keys[0])  # a hit makes keys[0] the most recently used
    one = store.entries()[-1].size_bytes
    result = store.prune(2 * one + 100)
    assert result.removed == 2 and result.kept == 2
    assert not decoded.exists()
    assert store.get("export", keys[1]) is None  # the oldest export entry went
    assert store.get("export", keys[0]) is not None and store.get("export", keys[2]) is not None
    assert store.prune(0).kept == 0 and store.info()["entries"] == 0


def test_prune_removes_stale_temp_folders(tmp_path: Path) -> None:
    store = CacheStore(tmp_path)
    stale = tmp_path / "builds/v1/tmp/abandoned"
    stale.mkdir(parents=True)
    fresh = tmp_path / "builds/v1/tmp/in-progress"
    fresh.mkdir()
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    store.prune(10**9)
    assert not stale.exists() and fresh.exists()


def test_info_counts_entries_per_kind(tmp_path: Path) -> None:
    store = CacheStore(tmp_path)
    store.put("export", KEY, {}, {"f": b"12345"})
    store.put("validation", OTHER, {"a": 1})
    info = store.info()
    assert info["kinds"]["export"]["entries"] == 1 and info["kinds"]["validation"]["entries"] == 1
    assert info["entries"] == 2 and info["size_bytes"] >= 5 and info["path"] == str(tmp_path)


@pytest.mark.parametrize(
    ("text", "size"),
    [("123", 123), ("2G", 2 * 10**9), ("500MiB", 500 * 2**20), ("1.5 GiB", int(1.5 * 2**30)), ("10kb", 10_000)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_parse_size_refuses_nonsense() -> None:
    with pytest.raises(UsageError, match="not a size"):
        parse_size("lots")


def test_auto_prune_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOBEX_CACHE_MAX_SIZE", raising=False)
    assert auto_prune_limit() == 5 * 2**30
    monkeypatch.setenv("MOBEX_CACHE_MAX_SIZE", "none")
    assert auto_prune_limit() is None
    monkeypatch.setenv("MOBEX_CACHE_MAX_SIZE", "100M")
    assert auto_prune_limit() == 100 * 10**6


def test_bad_entry_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        CacheStore(tmp_path).entry_path("export", "../../x")


def test_large_file_hashes_are_remembered_until_the_file_changes(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "cache")
    data = tmp_path / "train.npz"
    data.write_bytes(b"a" * (2 << 20))
    first = store.file_sha256(data)
    assert first == hashlib.sha256(data.read_bytes()).hexdigest()
    assert len(list((tmp_path / "cache/builds/v1/filehash").glob("*.json"))) == 1
    assert store.file_sha256(data) == first
    st = data.stat()
    time.sleep(0.05)  # file times tick at the kernel's clock granularity (a few ms)
    data.write_bytes(b"b" * (2 << 20))  # same size, and the old modification time put back: the ctime moved on
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert store.file_sha256(data) == hashlib.sha256(data.read_bytes()).hexdigest() != first
    assert store.info()["entries"] == 0, "remembered hashes are not cache entries"
