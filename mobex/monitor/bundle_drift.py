"""`mobex drift BUNDLE DATA.npz`: new data (e.g. collected from the app) against the statistics a bundle carries.

The bundle is verified first when a key is given, extracted safely, its reference statistics read (only a
file the signed manifest lists), the new inputs loaded against its I/O contract and run through its model in
the runner its target provides on this host; then mobex.validate.drift compares every feature and output.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from mobex.errors import DataError, UsageError, VerificationError
from mobex.validate import stats as stats_mod
from mobex.validate.drift import (
    DEFAULT_KS_P,
    DEFAULT_PSI,
    MIN_SAMPLES,
    REFERENCE_STATS_ASSET,
    DriftReport,
    compare,
    load_new_data,
)


def _runner_for(root: Path, manifest) -> tuple[object, str]:  # noqa: ANN001
    """The runner the model's target provides on this host (LiteRT, Core ML on macOS or the MIL interpreter)."""
    from mobex import plugins

    info = plugins.target_for_format(manifest.model["format"])
    if info is None:
        raise UsageError(f"the bundle's model format {manifest.model['format']!r} is not one this mobex can run")
    made = plugins.target(info.name).runner(root / manifest.model["path"], None)
    return made.runner, made.backend


def _model_outputs(runner, arrays: dict[str, np.ndarray], manifest_inputs: list[dict]) -> tuple[list[np.ndarray], int]:  # noqa: ANN001
    """Run the model batch by batch (the input's first dimension); returns outputs and samples used."""
    batch = int(manifest_inputs[0]["shape"][0])
    n = next(iter(arrays.values())).shape[0]
    usable = (n // batch) * batch
    chunks: list[list[np.ndarray]] | None = None
    for lo in range(0, usable, batch):
        feed = {}
        for spec in manifest_inputs:
            arr = arrays[spec["name"]][lo : lo + batch]
            dtype = np.dtype(spec["dtype"])
            feed[spec["name"]] = arr.astype(np.float32 if dtype.kind == "f" or spec.get("quantization") else dtype)
        outs = runner.run(feed)
        if chunks is None:
            chunks = [[] for _ in outs]
        for i, o in enumerate(outs):
            chunks[i].append(np.asarray(o))
    if chunks is None:
        raise DataError(f"the new data has {n} samples, fewer than the model's batch size {batch}")
    return [np.concatenate(c, axis=0) for c in chunks], usable


def _reference_stats(root: Path, manifest, bundle_name: str) -> dict:  # noqa: ANN001 - Manifest
    """The bundle's reference statistics: only a file the (signed) manifest lists, bounded JSON."""
    from mobex.bounded import loads_json
    from mobex.bundle.manifest import check_relative_posix

    rel = str(manifest.model.get("reference_stats_file") or REFERENCE_STATS_ASSET)
    try:
        check_relative_posix(rel, "model.reference_stats_file")
    except ValueError as exc:
        raise VerificationError(f"{bundle_name}: {exc}") from None
    if rel not in {f.path for f in manifest.files}:
        if rel == REFERENCE_STATS_ASSET and not (root / rel).exists():
            raise UsageError(
                f"{bundle_name} has no {rel}",
                "rebuild the bundle with this mobex version: builds now store reference statistics for drift checks",
            )
        raise VerificationError(f"{bundle_name}: {rel} is not one of the files the manifest lists and signs")
    asset = root / rel
    if asset.is_symlink() or not asset.is_file():
        raise VerificationError(f"{bundle_name}: {rel} is listed in the manifest but missing from the bundle")
    try:
        reference = loads_json(asset.read_bytes(), rel)
    except ValueError as exc:
        raise VerificationError(f"{bundle_name}: {rel} is not usable reference statistics: {exc}") from None
    if not isinstance(reference, dict):
        raise VerificationError(f"{bundle_name}: {rel} is not a JSON object")
    return reference


def check_bundle_drift(
    bundle: Path,
    data: Path,
    *,
    key: Path | None = None,
    psi_threshold: float = DEFAULT_PSI,
    ks_p: float = DEFAULT_KS_P,
    run_model: bool = True,
) -> DriftReport:
    """Compare `data` with the reference statistics inside `bundle` (signature checked first when `key` is given)."""
    from mobex.bundle.archive import safe_extract
    from mobex.bundle.verify import read_manifest, verify_bundle

    bundle, data = Path(bundle), Path(data)
    if not 0 < ks_p < 1:
        raise UsageError(f"--ks-p must be between 0 and 1, got {ks_p}")
    if psi_threshold <= 0:
        raise UsageError(f"--psi must be positive, got {psi_threshold}")
    if key is not None:
        manifest = verify_bundle(bundle, key)
        verification = f"signature verified with {key}"
    else:
        manifest = read_manifest(bundle)
        verification = "NOT verified: pass --key PUB.pem to check the bundle's signature first"
    inputs_spec = manifest.model["inputs"]
    with tempfile.TemporaryDirectory(prefix="mobex-drift-") as work:
        root = Path(work) / "bundle"
        safe_extract(bundle, root)
        reference = _reference_stats(root, manifest, bundle.name)
        if reference.get("schema") != stats_mod.STATS_SCHEMA:
            raise UsageError(f"{REFERENCE_STATS_ASSET} has schema {reference.get('schema')!r}; this mobex reads "
                             f"{stats_mod.STATS_SCHEMA}")  # fmt: skip
        arrays = load_new_data(data, inputs_spec)
        notes: list[str] = []
        outputs = None
        if run_model and any(p["role"] == "output" for p in reference["plans"]):
            runner, backend = _runner_for(root, manifest)
            outputs, used = _model_outputs(runner, arrays, inputs_spec)
            notes.append(f"outputs computed by the bundle's model ({backend}) on {used} samples")
    n = next(iter(arrays.values())).shape[0]
    rows, per_test = compare(reference, arrays, outputs, psi_threshold=psi_threshold, ks_p=ks_p)
    if n < MIN_SAMPLES:
        notes.append(f"only {n} new samples: the KS test has little power and PSI is noisy below {MIN_SAMPLES}")
    notes.append(f"reference: {reference['samples']} validation samples")
    return DriftReport(
        bundle=str(bundle),
        data=str(data),
        verified=key is not None,
        verification=verification,
        samples=int(n),
        psi_threshold=psi_threshold,
        ks_p=ks_p,
        ks_p_per_test=per_test,
        features=rows,
        notes=notes,
        outputs_checked=outputs is not None,
    )
