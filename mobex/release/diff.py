"""`mobex diff OLD.zip NEW.zip`: what changed between two bundles of a model, for a release script.

Without data it compares the manifests: version, format, quantization, model size, the I/O contract (names,
shapes, dtypes), labels, preprocessing and the validated metrics. With `--data DATA.npz` (one array per
model input, as for `mobex drift`) it also runs both models on it: the new one's agreement with the old one
(top-1 for classifiers, output cosine and largest difference) and their latency, timed interleaved. With
`--key` both bundles are verified first (and only then run); without it the manifests are read unverified
and the result says so (`verified: false`), and the models are not run.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mobex import plugins
from mobex.bundle.manifest import Manifest
from mobex.errors import UsageError


@dataclass(frozen=True)
class BundleDiff:
    old: dict[str, Any]
    new: dict[str, Any]
    changes: list[str]  # one line per difference, for people
    verified: bool
    agreement: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def diff_bundles(old: Path, new: Path, *, key: Path | None = None, data: Path | None = None) -> BundleDiff:
    """Compare two bundles (see module docstring)."""
    if data is not None and key is None:
        raise UsageError("--data runs both models, so both bundles must be verified first", "pass --key PUB.pem")
    with tempfile.TemporaryDirectory(prefix="mobex-diff-") as work:
        roots = [Path(work) / "old", Path(work) / "new"]
        manifests = [_open(path, key, root) for path, root in zip((old, new), roots, strict=True)]
        summaries = [_summary(m) for m in manifests]
        changes = _changes(*summaries)
        agreement = latency = None
        if data is not None:
            agreement, latency = _run_both(manifests, roots, data)
    return BundleDiff(summaries[0], summaries[1], changes, key is not None, agreement, latency)


def _open(path: Path, key: Path | None, root: Path) -> Manifest:
    from mobex.bundle.archive import safe_extract
    from mobex.bundle.signing import verify_directory
    from mobex.bundle.verify import read_manifest, verify_bundle

    if key is None:
        return read_manifest(Path(path))
    manifest = verify_bundle(Path(path), key)
    safe_extract(Path(path), root)
    verify_directory(root, key)
    return manifest


def _summary(m: Manifest) -> dict[str, Any]:
    gates = (m.metrics or {}).get("gates") or {}
    return {
        "name": m.name,
        "version": m.version,
        "platform": m.platform,
        "format": m.model["format"],
        "quantization": m.model.get("quantization"),
        "model_bytes": sum(f.size for f in m.model_files()),
        "inputs": [(t["name"], t["shape"], t["dtype"]) for t in m.model["inputs"]],
        "outputs": [(t["name"], t["shape"], t["dtype"]) for t in m.model["outputs"]],
        "labels": m.labels,
        "preprocessing": m.preprocessing,
        "metrics": {name: g.get("value") for name, g in gates.items()},
    }


def _changes(old: dict, new: dict) -> list[str]:
    lines = []
    for key in ("name", "platform", "version", "format", "quantization", "inputs", "outputs", "preprocessing"):
        if old[key] != new[key]:
            lines.append(f"{key}: {old[key]} -> {new[key]}")
    if old["model_bytes"] != new["model_bytes"]:
        growth = new["model_bytes"] / old["model_bytes"] - 1 if old["model_bytes"] else float("inf")
        lines.append(f"model size: {old['model_bytes']} -> {new['model_bytes']} bytes ({growth:+.1%})")
    if old["labels"] != new["labels"]:
        lines.append(f"labels: {len(old['labels'] or [])} -> {len(new['labels'] or [])} (contents differ)")
    for metric in sorted(set(old["metrics"]) | set(new["metrics"])):
        a, b = old["metrics"].get(metric), new["metrics"].get(metric)
        if a != b:
            lines.append(f"validated {metric}: {a} -> {b}")
    return lines


def _run_both(manifests: list[Manifest], roots: list[Path], data: Path) -> tuple[dict, dict | None]:
    from mobex.data import Dataset
    from mobex.metrics.parity import parity_summary
    from mobex.release.compare import interleaved_p50
    from mobex.validate.drift import load_new_data
    from mobex.validate.validator import run_all

    if [t["name"] for t in manifests[0].model["inputs"]] != [t["name"] for t in manifests[1].model["inputs"]]:
        raise UsageError("the two models take different inputs: --data cannot feed both")
    arrays = load_new_data(Path(data), manifests[1].model["inputs"])
    targets = [plugins.target(_target_name(m)) for m in manifests]
    paths = [root / m.model["path"] for root, m in zip(roots, manifests, strict=True)]
    runners = [t.runner(p, None).runner for t, p in zip(targets, paths, strict=True)]
    batch = int(manifests[1].model["inputs"][0]["shape"][0])
    if next(iter(arrays.values())).shape[0] < batch:
        raise UsageError(f"--data holds fewer samples than one batch ({batch})")
    samples = Dataset(role="diff", path=Path(data), arrays=arrays, batch=batch)
    outputs = [run_all(r.run, samples) for r in runners]
    names = [t["name"] for t in manifests[1].model["outputs"]]
    task = "classification" if manifests[1].task == "classification" else "other"
    summary = parity_summary(names, outputs[0], outputs[1], task=task, labels=None)
    keys = ("top1_agreement", "cosine_min", "cosine_mean", "max_abs_error", "mean_abs_error", "snr_db")
    agreement = {k: summary[k] for k in keys if isinstance(summary.get(k), (int, float))}
    makers = [t.latency_runner(p, None) for t, p in zip(targets, paths, strict=True)]
    latency = interleaved_p50(makers[0], makers[1], samples.feed(0), threads=1) if all(makers) else None
    return agreement, latency


def _target_name(manifest: Manifest) -> str:
    info = plugins.target_for_format(manifest.model["format"])
    if info is None:
        raise UsageError(f"model format {manifest.model['format']!r} is unknown to this mobex")
    return info.name
