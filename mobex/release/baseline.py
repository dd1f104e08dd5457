"""The release a build replaces: bundles given as files, or pulled from a registry channel, verified first.

`mobex build --baseline OLD-android.zip --baseline OLD-ios.zip` names the previous bundles directly;
`--baseline REGISTRY --baseline-channel stable` (a registry folder or URL) pulls what that channel ships for
each platform the recipe builds, exactly as `mobex pull` does (pointer signature, expiry, digest, bundle
signature). Either way the bundle's signature is checked before its model is loaded: a baseline is as
untrusted as any download. Each platform gets at most one baseline.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mobex.bundle.manifest import Manifest
from mobex.errors import UsageError


@dataclass(frozen=True)
class Baseline:
    """A verified previous bundle, extracted: its manifest and where its model file (or folder) is."""

    platform: str
    source: str  # the file or registry it came from, for the report
    manifest: Manifest
    root: Path  # the verified, extracted bundle

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def model_path(self) -> Path:
        return self.root / self.manifest.model["path"]

    @property
    def model_size(self) -> int:
        return sum(f.size for f in self.manifest.model_files())


@contextmanager
def load_baselines(
    specs: list[str],
    *,
    key: Path,
    model: str,
    platforms: list[str],
    channel: str | None = None,
    token: str | None = None,
) -> Iterator[dict[str, Baseline]]:
    """Verified baselines by platform, extracted into a private temporary folder removed on exit.

    Each spec is a bundle (`.zip`) or, with `channel`, a registry (folder or URL) to pull each platform from.
    `key` verifies them: the release public key for bundles, the registry's pinned root key for a registry.
    """
    work = Path(tempfile.mkdtemp(prefix="mobex-baseline-"))
    try:
        found: dict[str, Baseline] = {}
        for spec in specs:
            for baseline in _load(spec, work, key=key, model=model, platforms=platforms, channel=channel,
                                  token=token):  # fmt: skip
                if baseline.platform in found:
                    raise UsageError(
                        f"--baseline: two baselines for {baseline.platform} ({found[baseline.platform].source} and "
                        f"{spec})",
                        "give one previous bundle per platform",
                    )
                found[baseline.platform] = baseline
        yield found
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _load(
    spec: str, work: Path, *, key: Path, model: str, platforms: list[str], channel: str | None, token: str | None
) -> list[Baseline]:
    if spec.endswith(".zip"):
        return [_from_bundle(Path(spec), work, key, model, platforms)]
    if channel is None:
        raise UsageError(
            f"--baseline {spec} is not a .zip bundle",
            "pass a previous bundle, or a registry (folder or URL) with --baseline-channel CHANNEL",
        )
    return [_from_registry(spec, work, key, model, p, channel, token) for p in platforms]


def _from_bundle(path: Path, work: Path, key: Path, model: str, platforms: list[str]) -> Baseline:
    from mobex.bundle.archive import safe_extract
    from mobex.bundle.signing import verify_directory
    from mobex.bundle.verify import verify_bundle

    if not path.is_file():
        raise UsageError(f"--baseline {path}: no such bundle file")
    manifest = verify_bundle(path, key)  # signature and every file, before anything is loaded
    _check_matches(manifest, model, platforms, str(path))
    root = work / f"{manifest.platform}-{manifest.version}"
    safe_extract(path, root)
    verify_directory(root, key)  # what is loaded is exactly what was verified
    return Baseline(manifest.platform, str(path), manifest, root)


def _from_registry(
    source: str, work: Path, key: Path, model: str, platform: str, channel: str, token: str | None
) -> Baseline:
    from mobex.bundle.manifest import MANIFEST_FILE
    from mobex.registry.pull import pull

    out = work / f"pull-{platform}"
    result = pull(model, source, channel, platform, key, out, token=token)  # verified as `mobex pull` does
    root = Path(result.path)
    manifest = Manifest.from_json_bytes((root / MANIFEST_FILE).read_bytes())
    _check_matches(manifest, model, [platform], f"{source} ({channel})")
    return Baseline(platform, f"{source} {channel}/{platform} {result.version}", manifest, root)


def _check_matches(manifest: Manifest, model: str, platforms: list[str], where: str) -> None:
    if manifest.name != model:
        raise UsageError(f"--baseline {where} is a bundle of {manifest.name!r}, not of {model!r}")
    if manifest.platform not in platforms:
        raise UsageError(
            f"--baseline {where} is a {manifest.platform} bundle, and the recipe builds {', '.join(platforms)}"
        )
