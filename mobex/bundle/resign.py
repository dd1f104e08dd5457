"""Re-sign an existing bundle with another key, e.g. a release key after a CI build that signed
with a development key. The contents are not touched: only `signature.sigstore.json` changes.

With `trusted_key`, the old signature is verified first (authenticity and integrity). Without it,
the files are only checked against the manifest's sha256 list (integrity): the caller vouches for
where the bundle came from, and the command says so.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mobex.bundle.archive import safe_extract, write_deterministic_zip
from mobex.bundle.keys import load_private_key
from mobex.bundle.manifest import MANIFEST_FILE, Manifest, created_epoch
from mobex.bundle.signing import SIGNATURE_FILE, sign_directory
from mobex.bundle.verify import _compare_files, _parse_manifest, check_contents, verify_bundle
from mobex.errors import UsageError, VerificationError


def resign_bundle(zip_path: Path, private_key: Path, out_zip: Path, *, trusted_key: Path | None = None) -> Manifest:
    """Write `out_zip`: the same files as `zip_path`, signed with `private_key`. Atomic."""
    load_private_key(private_key)
    if not Path(zip_path).is_file():
        raise UsageError(f"bundle {zip_path} does not exist")
    if trusted_key is not None:
        verify_bundle(zip_path, trusted_key)
    with tempfile.TemporaryDirectory(prefix="mobex-resign-") as work:
        root = Path(work) / "bundle"
        safe_extract(zip_path, root)
        if not (root / MANIFEST_FILE).is_file():
            raise VerificationError(f"{Path(zip_path).name} has no {MANIFEST_FILE}: not a mobex bundle")
        manifest = _parse_manifest((root / MANIFEST_FILE).read_bytes(), Path(zip_path).name)
        (root / SIGNATURE_FILE).unlink(missing_ok=True)
        _compare_files(manifest, root)
        problem = check_contents(manifest, root)
        if problem:
            raise VerificationError(f"{Path(zip_path).name}: {problem}")
        sign_directory(root, private_key)
        write_deterministic_zip(root, Path(out_zip), source_date_epoch=created_epoch(manifest.created))
    return manifest
