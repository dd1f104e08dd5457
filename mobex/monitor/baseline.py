"""What the build validated, for comparison with the field: from the signed bundle and the build's report.

The bundle's manifest carries the shipped variant's task metrics (accuracy, precision, recall, F1
on the validation split) and `assets/reference_stats.json` (the drift reference). It carries no
latency: latency is measured on the build machine and dropped from the bundle as volatile. The
build's own `report.json` (next to the bundles in `--out`) has it; pass it with `--build-report`
to compare field latency with the build's, and it is checked to be the report of this bundle's build.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mobex.bundle.archive import safe_extract
from mobex.bundle.manifest import Manifest, check_relative_posix
from mobex.bundle.verify import read_manifest, verify_bundle
from mobex.errors import UsageError
from mobex.validate import stats as stats_mod
from mobex.validate.drift import REFERENCE_STATS_ASSET

MAX_REPORT_BYTES = 64 << 20
TASK_METRICS = ("accuracy", "precision", "recall", "f1")
_UNVERIFIED = "NOT verified: pass --key PUB.pem to check the bundle's signature first"
LATENCY_METRICS = ("p50_ms", "p90_ms", "p99_ms", "throughput_per_s")


@dataclass(frozen=True)
class Baseline:
    manifest: Manifest
    verification: str
    metrics: dict[str, float | None]  # the shipped variant's accuracy, precision, recall, f1
    latency: dict[str, float | None] | None  # from --build-report, else None
    latency_source: str
    reference: dict | None  # the reference statistics asset

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.labels or [])

    def class_index(self, value: int | str) -> int | None:
        """A label as a class index: an int is one, a string is looked up in the bundle's labels."""
        if isinstance(value, int):
            return value if value >= 0 else None
        try:
            return self.labels.index(value)
        except ValueError:
            return None

    def plans(self, role: str) -> list[dict]:
        return [p for p in (self.reference or {}).get("plans", []) if p.get("role") == role]


def load_baseline(bundle: Path, key: Path | None, build_report: Path | None = None) -> Baseline:
    bundle = Path(bundle)
    manifest = verify_bundle(bundle, key) if key is not None else read_manifest(bundle)
    verification = f"signature verified with {key}" if key is not None else _UNVERIFIED
    parity = manifest.metrics.get("parity") or {}
    metrics = {k: parity.get(k) for k in TASK_METRICS}
    latency, source = None, "none: pass --build-report dist/report.json to compare latency with the build"
    if build_report is not None:
        latency = _report_latency(Path(build_report), manifest)
        source = f"{build_report} (host latency of the build machine, {latency.get('threads')} thread(s))"
    return Baseline(manifest, verification, metrics, latency, source, _reference_stats(bundle, manifest))


def _reference_stats(bundle: Path, manifest: Manifest) -> dict | None:
    rel = str(manifest.model.get("reference_stats_file") or REFERENCE_STATS_ASSET)
    try:
        check_relative_posix(rel)
    except ValueError:
        return None
    with tempfile.TemporaryDirectory(prefix="mobex-monitor-") as work:
        root = Path(work) / "bundle"
        safe_extract(bundle, root)
        path = root / rel
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    return data if data.get("schema") == stats_mod.STATS_SCHEMA else None


def _report_latency(path: Path, manifest: Manifest) -> dict:
    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            raise UsageError(f"{path} is larger than {MAX_REPORT_BYTES} bytes; is it a mobex report.json?")
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the build report {path}: {exc}") from None
    recipe = report.get("recipe") or {}
    wanted = manifest.provenance.get("recipe_sha256")
    if recipe.get("version") != manifest.version or (wanted and recipe.get("sha256") != wanted):
        raise UsageError(
            f"{path} is the report of {recipe.get('name')} {recipe.get('version')}, not of the build of "
            f"{manifest.bundle_filename()}",
            hint="pass the report.json written next to this bundle by `mobex build`",
        )
    for v in report.get("variants") or []:
        if v.get("shipped") and v.get("platform") == manifest.platform and v.get("latency"):
            lat = v["latency"]
            return {**{k: lat.get(k) for k in LATENCY_METRICS}, "threads": lat.get("threads")}
    raise UsageError(f"{path} has no latency for the shipped {manifest.platform} variant")
