"""Build a signed bundle zip from a staging folder, verify one, and read its manifest.

Building: copy the staging tree (regular files only) into a private work folder, record every
file's sha256 and size in the manifest, write manifest.json, sign the folder with model-signing,
zip it deterministically. Verifying does the reverse and trusts nothing before the signature:
safe extraction, model-signing's check of every file (manifest.json included), then the manifest's
own file list against the extracted files, then the manifest's internal consistency.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from pydantic import ValidationError

from mobex.bounded import name_list
from mobex.bundle.archive import MAX_ENTRIES, check_entry_count, safe_extract, write_deterministic_zip
from mobex.bundle.keys import load_private_key, load_public_key
from mobex.bundle.manifest import (
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    Manifest,
    created_epoch,
    file_entries,
    resolve_source_date_epoch,
)
from mobex.bundle.signing import SIGNATURE_FILE, sign_directory, verify_directory
from mobex.errors import UsageError, VerificationError

LAYOUT = ("model/", "assets/", "report.json")
LABELS_FILE = "assets/labels.txt"
_JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "__MACOSX"})
_GIT_NAMES = frozenset({".git", ".gitattributes", ".github", ".gitignore"})


def build_bundle(
    staging_dir: Path,
    manifest: Manifest,
    out_zip: Path,
    private_key: Path,
    *,
    source_date_epoch: int | None,
) -> Path:
    """Write the signed bundle `out_zip` from `staging_dir` (model/..., assets/..., report.json).

    `manifest.files` is recomputed from the staged files (whatever the caller put there is
    replaced). Zip timestamps come from `source_date_epoch`, else $SOURCE_DATE_EPOCH, else
    `manifest.created`, so a rebuild is byte-identical except for the (randomized) ECDSA signature.
    The staging folder is not modified; `out_zip` appears atomically, or not at all.
    """
    staging_dir = Path(staging_dir)
    out_zip = Path(out_zip)
    if not staging_dir.is_dir():
        raise UsageError(f"staging folder {staging_dir} does not exist")
    load_private_key(private_key)
    epoch = resolve_source_date_epoch(source_date_epoch)
    if epoch is None:
        epoch = created_epoch(manifest.created)
    with tempfile.TemporaryDirectory(prefix="mobex-bundle-") as work:
        bundle_dir = Path(work) / manifest.bundle_filename().removesuffix(".zip")
        _copy_staging(staging_dir, bundle_dir)
        data = manifest.model_dump(by_alias=True)
        data["files"] = [e.model_dump() for e in file_entries(bundle_dir)]
        try:
            final = Manifest.model_validate(data)
        except ValidationError as exc:
            raise UsageError(f"invalid bundle manifest: {_first_error(exc)}") from exc
        problem = check_contents(final, bundle_dir)
        if problem:
            raise UsageError(f"cannot build {final.bundle_filename()}: {problem}")
        (bundle_dir / MANIFEST_FILE).write_bytes(final.to_json_bytes())
        sign_directory(bundle_dir, private_key)
        write_deterministic_zip(bundle_dir, out_zip, source_date_epoch=epoch)
    return out_zip


def verify_bundle(
    zip_path: Path,
    public_key: Path,
    *,
    expect_name: str | None = None,
    expect_version: str | None = None,
    expect_platform: str | None = None,
) -> Manifest:
    """Return the manifest of `zip_path` only if every file matches the signed manifest.

    Raises VerificationError naming the first problem (unsafe archive, unsigned, wrong key,
    changed/added/missing file, manifest inconsistent, or not the expected name/version/platform),
    and UsageError for a bad key or a missing file.
    """
    zip_path = Path(zip_path)
    load_public_key(public_key)
    if not zip_path.is_file():
        raise UsageError(f"bundle {zip_path} does not exist")
    with tempfile.TemporaryDirectory(prefix="mobex-verify-") as work:
        root = Path(work) / "bundle"
        safe_extract(zip_path, root)
        if not (root / SIGNATURE_FILE).is_file():
            raise VerificationError(f"{zip_path.name} has no {SIGNATURE_FILE}: the bundle is not signed")
        if not (root / MANIFEST_FILE).is_file():
            raise VerificationError(f"{zip_path.name} has no {MANIFEST_FILE}")
        verify_directory(root, public_key)  # covers manifest.json: from here on its bytes are signed
        manifest = _parse_manifest((root / MANIFEST_FILE).read_bytes(), zip_path.name)
        _compare_files(manifest, root)
        problem = check_contents(manifest, root)
        if problem:
            raise VerificationError(f"{zip_path.name}: {problem}")
    for field, expected in (("name", expect_name), ("version", expect_version), ("platform", expect_platform)):
        actual = getattr(manifest, field)
        if expected is not None and actual != expected:
            raise VerificationError(f"bundle {field} is {actual!r}, expected {expected!r}")
    return manifest


def read_manifest(zip_path: Path) -> Manifest:
    """The manifest of a bundle, for `mobex inspect`. Does NOT verify anything: use verify_bundle to trust it."""
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise UsageError(f"bundle {zip_path} does not exist")
    check_entry_count(zip_path, MAX_ENTRIES)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            matches = [i for i in zf.infolist() if i.orig_filename == MANIFEST_FILE]
            if len(matches) != 1:
                raise VerificationError(f"{zip_path.name} has {'no' if not matches else 'several'} {MANIFEST_FILE}")
            if matches[0].file_size > MAX_MANIFEST_BYTES:
                raise VerificationError(f"{MANIFEST_FILE} in {zip_path.name} is implausibly large")
            data = zf.read(matches[0])
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise VerificationError(f"{zip_path.name} is not a readable bundle zip: {exc}") from exc
    return _parse_manifest(data, zip_path.name)


def check_contents(manifest: Manifest, root: Path) -> str | None:
    """What is wrong between the manifest and the files it describes, or None."""
    if not manifest.model_files():
        return f"model {manifest.model['path']} is not in the bundle"
    labels_path = root / LABELS_FILE
    if manifest.labels is not None and labels_path.is_file():
        lines = labels_path.read_text(encoding="utf-8").splitlines()
        if lines != manifest.labels:
            return f"manifest labels ({len(manifest.labels)}) differ from {LABELS_FILE} ({len(lines)} lines)"
    return None


def _copy_staging(src: Path, dst: Path) -> None:
    """Copy regular files (bytes only, no metadata) in the bundle layout; drop OS junk; refuse the rest."""
    for top in sorted(os.listdir(src)):
        if top in _JUNK_NAMES or top.startswith("._") or top in (MANIFEST_FILE, SIGNATURE_FILE):
            continue  # manifest and signature are regenerated
        if top in _GIT_NAMES:
            raise UsageError(f"{src / top}: git files do not belong in a bundle")
        path = src / top
        kind = "/" if path.is_dir() and not path.is_symlink() else ""
        if top + kind not in LAYOUT:
            raise UsageError(
                f"unexpected {src / top} in the staging folder",
                hint="a bundle holds model/, assets/ and report.json (manifest.json and the signature are generated)",
            )
    dst.mkdir(parents=True)
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = Path(dirpath).relative_to(src)
        dirnames[:] = sorted(d for d in dirnames if d not in _JUNK_NAMES and not d.startswith("._"))
        for name in dirnames:
            if Path(dirpath, name).is_symlink():
                raise UsageError(f"{Path(dirpath, name)} is a symlink; bundles hold regular files only")
        for name in sorted(filenames):
            if name in _JUNK_NAMES or name.startswith("._"):
                continue
            if rel_dir == Path(".") and name in (MANIFEST_FILE, SIGNATURE_FILE):
                continue
            source = Path(dirpath, name)
            if source.is_symlink() or not source.is_file():
                kind = "a symlink" if source.is_symlink() else "not a regular file"
                raise UsageError(f"{source} is {kind}; bundles hold regular files only")
            target = dst / rel_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


def _compare_files(manifest: Manifest, root: Path) -> None:
    listed = {f.path: f for f in manifest.files}
    actual = {f.path: f for f in file_entries(root)}
    missing = sorted(listed.keys() - actual.keys())
    extra = sorted(actual.keys() - listed.keys())
    changed = sorted(p for p in listed.keys() & actual.keys() if listed[p] != actual[p])
    if missing:
        raise VerificationError(f"file listed in the manifest is missing: {name_list(missing)}")
    if extra:
        raise VerificationError(f"file not listed in the manifest: {name_list(extra)}")
    if changed:
        raise VerificationError(f"file differs from its manifest sha256/size: {name_list(changed)}")


def _parse_manifest(data: bytes, where: str) -> Manifest:
    try:
        return Manifest.from_json_bytes(data)
    except ValidationError as exc:
        raise VerificationError(f"{MANIFEST_FILE} in {where} is invalid: {_first_error(exc)}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerificationError(f"{MANIFEST_FILE} in {where} is not valid JSON: {exc}") from exc


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ())) or "manifest"
    return f"{loc}: {err.get('msg')}"
