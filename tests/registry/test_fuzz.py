"""Property-based fuzzing: mutated bundles, pointers and entry names are refused cleanly, or mean the same.

"Cleanly" means a mobex error (never another exception), no file written outside the target
folder, and an `--out` that still holds what it held. A mutant that is accepted must install
exactly the files of the original bundle (e.g. a flipped byte in a zip local-header timestamp,
which no reader uses).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import warnings
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mobex.bundle.keys import load_private_key, load_public_key
from mobex.bundle.verify import verify_bundle
from mobex.errors import MobexError
from mobex.registry import dsse, layout, publish, trust
from mobex.registry.pointer import Pointer, new_pointer
from mobex.registry.pull import check_pointer, pull

from .conftest import tree_snapshot

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run: CI failures reproduce
)
POINTER_REL = layout.pointer_path("digits", "stable", "android")
BUNDLE_REL = layout.bundle_path("digits", "1.0.0", "android")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, bundle_factory, keypair) -> dict:
    base = tmp_path_factory.mktemp("fuzz")
    reg = base / "reg"
    publish.publish(bundle_factory("1.0.0"), reg, "stable", keypair[0])
    original = bundle_factory("1.0.0")
    ref = base / "reference-install"
    pull("digits", reg, "stable", "android", keypair[1], ref)
    return World(
        {
            "base": base,
            "reg": reg,
            "zip": original.read_bytes(),
            "installed": tree_snapshot((ref / "current").resolve()),
            "pointer": (reg / POINTER_REL).read_bytes(),
        }
    )


class World(dict):
    """The fuzzing fixtures; a short repr keeps hypothesis' failure reports readable."""

    def __repr__(self) -> str:
        return "<fuzz world>"


def resign_pointer_over(reg: Path, data: bytes, key) -> None:  # noqa: ANN001
    """What a stolen channel key can do: a valid pointer over arbitrary bytes."""
    ptr = new_pointer(
        model="digits", channel="stable", platform="android", sequence=1, version="1.0.0",
        sha256=hashlib.sha256(data).hexdigest(), size=max(len(data), 1), now=datetime.now(UTC),
        expires_in=timedelta(days=1),
    )  # fmt: skip
    (reg / POINTER_REL).write_bytes(dsse.sign(dsse.POINTER_TYPE, ptr.to_payload(), [key]))


edits = st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)), min_size=1, max_size=4)
mutation = st.one_of(
    st.tuples(st.just("xor"), edits),
    st.tuples(st.just("truncate"), st.integers(min_value=0)),
    st.tuples(st.just("insert"), st.tuples(st.integers(min_value=0), st.binary(min_size=1, max_size=64))),
)


def mutate(data: bytes, how: tuple) -> bytes:
    kind, arg = how
    if kind == "xor":
        out = bytearray(data)
        for pos, x in arg:
            out[pos % len(out)] ^= x
        return bytes(out)
    if kind == "truncate":
        return data[: arg % len(data)]
    pos, extra = arg
    pos %= len(data) + 1
    return data[:pos] + extra + data[pos:]


@settings(FUZZ, max_examples=150)
@given(how=mutation)
def test_mutated_bundles_are_refused_or_identical(world: dict, keypair, monkeypatch, how: tuple) -> None:
    base, reg = world["base"], world["reg"]
    watched_tmp = base / "system-tmp"
    watched_tmp.mkdir(exist_ok=True)
    monkeypatch.setattr(tempfile, "tempdir", str(watched_tmp))
    key = load_private_key(keypair[0])
    data = mutate(world["zip"], how)
    (reg / BUNDLE_REL).write_bytes(data)
    resign_pointer_over(reg, data, key)
    registry_before = tree_snapshot(reg)
    outs = base / "outs"
    outs.mkdir(exist_ok=True)
    outside_before = sorted(p.name for p in base.iterdir())
    out = Path(tempfile.mkdtemp(dir=outs))
    try:
        result = pull("digits", reg, "stable", "android", keypair[1], out)
    except MobexError as exc:
        event(f"refused: {type(exc).__name__}")
        assert not (out / "current").exists()
    else:
        event("accepted (same meaning)")
        assert result.status == "installed"
        assert tree_snapshot((out / "current").resolve()) == world["installed"], "accepted a different bundle"
    finally:
        shutil.rmtree(out, ignore_errors=True)
    assert tree_snapshot(reg) == registry_before  # pull never writes into the registry
    assert sorted(p.name for p in base.iterdir()) == outside_before  # nothing new beside --out
    assert list(watched_tmp.iterdir()) == []  # temporaries cleaned up


@settings(FUZZ, max_examples=500)
@given(how=mutation)
def test_mutated_pointer_envelopes_are_refused_or_identical(world: dict, keypair, how: tuple) -> None:
    pub = load_public_key(keypair[1])
    root = trust.pinned_root(pub)
    original, *_ = check_pointer(
        world["pointer"], root, model="digits", channel="stable", platform="android", now=datetime.now(UTC)
    )
    try:
        ptr, *_ = check_pointer(
            mutate(world["pointer"], how), root, model="digits", channel="stable", platform="android",
            now=datetime.now(UTC),
        )  # fmt: skip
    except MobexError:
        return
    assert ptr == original


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


@settings(FUZZ, max_examples=150)
@given(field=st.sampled_from(["model", "channel", "platform", "sequence", "version", "bundle", "bundle.path",
                              "bundle.sha256", "bundle.size", "published", "expires", "downgrade", "schema", "new",
                              "min_app_version", "rollout"]),
       value=json_values)  # fmt: skip
def test_signed_but_malformed_pointer_payloads_never_crash(world: dict, keypair, field: str, value) -> None:
    key = load_private_key(keypair[0])
    doc = json.loads(dsse.parse(world["pointer"]).payload)
    target = doc
    *parents, last = field.split(".")
    for p in parents:
        target = target[p]
    target[last] = value
    payload = json.dumps(doc).encode()
    envelope = dsse.sign(dsse.POINTER_TYPE, payload, [key])
    try:
        ptr, *_ = check_pointer(
            envelope, trust.pinned_root(key.public_key()), model="digits", channel="stable", platform="android",
            now=datetime.now(UTC),
        )  # fmt: skip
    except MobexError:
        return
    # accepted: then it is a well-formed pointer for what we asked, whose path is the layout's
    assert isinstance(ptr, Pointer) and ptr.bundle.path == layout.bundle_path("digits", ptr.version, "android")


names = st.lists(
    st.sampled_from(list("ab./\\:_-") + ["..", "\x00", "\x1f", "é", "É", "model", "/", "manifest.json"]),
    min_size=1,
    max_size=8,
).map("".join)


@settings(FUZZ, max_examples=120)
@given(name=names, payload=st.binary(max_size=64))
def test_hostile_entry_names_are_refused(world: dict, keypair, tmp_path_factory, name: str, payload: bytes) -> None:
    work = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    try:
        src = work / "in.zip"
        src.write_bytes(world["zip"])
        hostile = work / "hostile.zip"
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(hostile, "w") as zout:
            for info in zin.infolist():
                zout.writestr(info, zin.read(info))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "Duplicate name": exactly what we are testing
                    zout.writestr(name, payload)
            except (ValueError, UnicodeEncodeError, IndexError):
                return  # zipfile itself refuses to write this name (e.g. it cuts names at NUL)
        before = sorted(p.name for p in work.iterdir())
        try:
            manifest = verify_bundle(hostile, keypair[1])
        except MobexError:
            event("refused")
        else:  # only an (empty) directory entry adds nothing: same files, same manifest
            event("accepted: directory entry")
            assert name.endswith("/") and manifest == verify_bundle(src, keypair[1])
        assert sorted(p.name for p in work.iterdir()) == before
    finally:
        shutil.rmtree(work, ignore_errors=True)
