"""Open a bundle for serving: verify first, then extract into a private folder that lives as long as the model.

From a zip: the zip is first copied into a fresh private folder (mode 0700), so the bytes that are
verified are the bytes that are extracted and loaded (nobody can swap the file in between); then
`verify_bundle` (safe extraction, model-signing signature, every file against the signed manifest),
then `safe_extract` of that same private copy. From a registry channel: `mobex pull` has verified
and installed the tree; it is copied into a private folder, because pull removes old versions
while a swapped-out model may still be answering requests.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mobex.bundle.archive import safe_extract
from mobex.bundle.manifest import MANIFEST_FILE, Manifest
from mobex.bundle.verify import verify_bundle
from mobex.errors import VerificationError
from mobex.files import sha256_file


@dataclass(frozen=True)
class LoadedBundle:
    """A verified bundle extracted into `root` (private); `sha256` is the digest of the bundle zip."""

    manifest: Manifest
    root: Path
    sha256: str
    source: str

    @property
    def model_path(self) -> Path:
        return self.root / self.manifest.model["path"]

    def cleanup(self) -> None:
        """Remove the private folder (call when no request uses this bundle any more)."""
        shutil.rmtree(self.root.parent, ignore_errors=True)


def open_bundle_zip(zip_path: Path, public_key: Path) -> LoadedBundle:
    """Verify `zip_path` with `public_key` and extract it privately; raises VerificationError/UsageError."""
    zip_path = Path(zip_path)
    work = Path(tempfile.mkdtemp(prefix="mobex-serve-"))
    try:
        private_zip = work / "bundle.zip"
        if zip_path.is_file():
            shutil.copyfile(zip_path, private_zip)
        manifest = verify_bundle(private_zip if private_zip.is_file() else zip_path, public_key)
        digest = sha256_file(private_zip)
        root = work / "bundle"
        safe_extract(private_zip, root)
        private_zip.unlink()
        return LoadedBundle(manifest, root, digest, str(zip_path))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def open_installed(tree: Path, sha256: str, source: str) -> LoadedBundle:
    """A bundle folder installed (and verified) by `mobex pull`, copied into a private folder."""
    work = Path(tempfile.mkdtemp(prefix="mobex-serve-"))
    try:
        root = work / "bundle"
        shutil.copytree(Path(tree), root, symlinks=True)
        try:
            manifest = Manifest.from_json_bytes((root / MANIFEST_FILE).read_bytes())
        except (OSError, ValueError) as exc:
            raise VerificationError(f"the installed bundle {tree} has no readable {MANIFEST_FILE}: {exc}") from None
        return LoadedBundle(manifest, root, sha256, source)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
