from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mobex.bundle.keys import generate_keypair, load_private_key, load_public_key
from mobex.errors import UsageError, VerificationError
from mobex.registry import dsse, layout, trust


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    base = tmp_path_factory.mktemp("roles")
    return {name: generate_keypair(base / f"{name}.pem") for name in ("root", "root2", "release", "channel", "ci2")}


def fetcher(registry: Path):
    def fetch(rel: str) -> bytes | None:
        path = registry / rel
        return path.read_bytes() if path.exists() else None

    return fetch


def test_init_rotate_and_resolve_from_a_pinned_root_key(tmp_path: Path, keys) -> None:
    reg = tmp_path / "reg"
    v1 = trust.init_root(reg, keys["root"][0], release_keys=[keys["release"][1]], channel_keys=[keys["channel"][1]])
    assert v1.version == 1 and (reg / "trust/1.root.json").read_bytes() == (reg / layout.ROOT_FILE).read_bytes()
    assert set(v1.role_keys("channel")) == {dsse.keyid_of(load_public_key(keys["channel"][1]))}
    with pytest.raises(UsageError, match="already has a root"):
        trust.init_root(reg, keys["root"][0])

    # rotate the channel key and the root key: v2 is signed by the old and the new root key
    v2 = trust.rotate_root(
        reg, [keys["root"][0], keys["root2"][0]], root_keys=[keys["root2"][1]],
        release_keys=[keys["release"][1]], channel_keys=[keys["ci2"][1]],
    )  # fmt: skip
    assert v2.version == 2
    pinned = trust.pinned_root(load_public_key(keys["root"][1]))
    resolved = trust.resolve(fetcher(reg), pinned)
    assert resolved.version == 2
    assert set(resolved.role_keys("channel")) == {dsse.keyid_of(load_public_key(keys["ci2"][1]))}
    assert trust.load_registry_root(reg) == resolved
    # from v2 on, only root2 can rotate: the old root key alone is refused
    with pytest.raises(UsageError, match="cannot rotate"):
        trust.rotate_root(
            reg, [keys["root"][0]], root_keys=[keys["root"][1]],
            release_keys=[keys["release"][1]], channel_keys=[keys["channel"][1]],
        )  # fmt: skip
    assert not (reg / "trust/3.root.json").exists()


def test_successor_needs_old_and_new_root_keys_and_the_next_version(tmp_path: Path, keys) -> None:
    root1 = load_private_key(keys["root"][0])
    root2 = load_private_key(keys["root2"][0])
    pub = load_public_key
    v1 = trust.make_root(1, root_keys=[pub(keys["root"][1])], release_keys=[pub(keys["release"][1])],
                         channel_keys=[pub(keys["channel"][1])])  # fmt: skip
    v2 = trust.make_root(2, root_keys=[pub(keys["root2"][1])], release_keys=[pub(keys["release"][1])],
                         channel_keys=[pub(keys["channel"][1])])  # fmt: skip
    assert trust.verify_successor(v1, trust.sign_root(v2, [root1, root2])).version == 2
    with pytest.raises(VerificationError, match="previous root"):
        trust.verify_successor(v1, trust.sign_root(v2, [root2]))  # attacker with only a new key
    with pytest.raises(VerificationError, match="own keys"):
        trust.verify_successor(v1, trust.sign_root(v2, [root1]))  # new keys never proved possession
    v3 = trust.make_root(3, root_keys=[pub(keys["root"][1])], release_keys=[pub(keys["release"][1])],
                         channel_keys=[pub(keys["channel"][1])])  # fmt: skip
    with pytest.raises(VerificationError, match="version 3, expected 2"):
        trust.verify_successor(v1, trust.sign_root(v3, [root1]))  # skipping a version
    index_env = dsse.sign(dsse.INDEX_TYPE, v2.to_payload(), [root1, root2])
    with pytest.raises(VerificationError, match="payload type"):
        trust.verify_successor(v1, index_env)


def test_root_documents_are_checked(keys) -> None:
    pub = load_public_key
    v1 = trust.make_root(1, root_keys=[pub(keys["root"][1])], release_keys=[pub(keys["release"][1])],
                         channel_keys=[pub(keys["channel"][1])])  # fmt: skip
    doc = json.loads(v1.to_payload())
    kid = next(iter(doc["keys"]))
    bad_docs = []
    for mutate in (
        lambda d: d["roles"]["channel"].update(threshold=2),
        lambda d: d["roles"]["release"].update(keyids=["00" * 32]),
        lambda d: d["roles"].pop("channel"),
        lambda d: d["keys"].update({"11" * 32: d["keys"][kid]}),  # key id that is not the key's hash
        lambda d: d.update(version=0),
        lambda d: d.update(extra=True),
        lambda d: d["keys"][kid].update(keytype="ed25519"),
    ):
        d = json.loads(v1.to_payload())
        mutate(d)
        bad_docs.append(json.dumps(d).encode())
    for payload in bad_docs:
        with pytest.raises(VerificationError):
            trust.Root.from_payload(payload)


def test_expired_final_root_is_refused(tmp_path: Path, keys) -> None:
    reg = tmp_path / "reg"
    trust.init_root(reg, keys["root"][0], expires=datetime(2026, 1, 1, tzinfo=UTC))
    pinned = trust.pinned_root(load_public_key(keys["root"][1]))
    with pytest.raises(VerificationError, match="expired"):
        trust.resolve(fetcher(reg), pinned, now=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=1))
    assert trust.resolve(fetcher(reg), pinned, now=datetime(2025, 12, 31, tzinfo=UTC)).version == 1


def test_pin_can_be_a_key_or_a_root_file(tmp_path: Path, keys) -> None:
    reg = tmp_path / "reg"
    trust.init_root(reg, keys["root"][0], channel_keys=[keys["channel"][1]])
    from_file = trust.load_pin(reg / "trust/1.root.json")
    assert from_file.version == 1 and from_file.payload
    from_key = trust.load_pin(keys["root"][1])
    assert from_key.version == 0 and set(from_key.roles) == {"root", "release", "channel"}
    forged = json.loads((reg / "trust/1.root.json").read_bytes())
    forged["signatures"] = json.loads(dsse.sign(dsse.ROOT_TYPE, b"{}", [load_private_key(keys["ci2"][0])]))[
        "signatures"
    ]
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    with pytest.raises(VerificationError):
        trust.load_pin(tmp_path / "forged.json")


def test_require_role_names_the_fix(tmp_path: Path, keys) -> None:
    reg = tmp_path / "reg"
    root = trust.init_root(reg, keys["root"][0], channel_keys=[keys["channel"][1]])
    with pytest.raises(UsageError, match="not a channel key") as info:
        trust.require_role(root, load_private_key(keys["release"][0]), "channel", "release.pem")
    assert "rotate" in (info.value.hint or "")
