"""Re-signing swaps the signature for another key's and nothing else; tampered bundles are refused."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from mobex.bundle.resign import resign_bundle
from mobex.bundle.verify import build_bundle, verify_bundle
from mobex.errors import VerificationError

SIGNATURE = "signature.sigstore.json"


@pytest.fixture
def dev_bundle(tmp_path: Path, make_staging, make_manifest, keypair) -> Path:
    staging = make_staging(tmp_path / "staging")
    return build_bundle(staging, make_manifest(), tmp_path / "dev.zip", keypair[0], source_date_epoch=None)


def _entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def test_resign_with_release_key(dev_bundle: Path, tmp_path: Path, keypair, other_keypair) -> None:
    out = tmp_path / "release.zip"
    manifest = resign_bundle(dev_bundle, other_keypair[0], out, trusted_key=keypair[1])
    assert manifest.name == "digits"
    assert verify_bundle(out, other_keypair[1]).version == "1.2.3"
    with pytest.raises(VerificationError):
        verify_bundle(out, keypair[1])  # the old key no longer verifies it
    before, after = _entries(dev_bundle), _entries(out)
    assert sorted(before) == sorted(after)
    assert all(before[name] == after[name] for name in before if name != SIGNATURE)


def test_resign_refuses_wrong_old_key_and_tampering(
    dev_bundle: Path, tmp_path: Path, other_keypair, rewrite_zip, flip
) -> None:
    with pytest.raises(VerificationError):
        resign_bundle(dev_bundle, other_keypair[0], tmp_path / "x.zip", trusted_key=other_keypair[1])
    tampered = rewrite_zip(dev_bundle, tmp_path / "t.zip", change={"model/digits.tflite": flip})
    with pytest.raises(VerificationError, match="model/digits.tflite"):
        resign_bundle(tampered, other_keypair[0], tmp_path / "y.zip")  # even without --verify-with
    assert not (tmp_path / "x.zip").exists() and not (tmp_path / "y.zip").exists()
