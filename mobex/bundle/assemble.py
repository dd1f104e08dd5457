"""Lay out one platform's bundle from the shipped variant, then hand it to the signer and zipper.

Layout (DESIGN.md): manifest.json, model/<name>.tflite or model/<Name>.mlpackage/..., assets/
(labels, reference statistics for `mobex drift`), report.json, signature.sigstore.json.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from mobex import plugins
from mobex.bundle.manifest import Manifest, iso_utc, model_section, resolve_source_date_epoch
from mobex.bundle.verify import build_bundle
from mobex.provenance import provenance
from mobex.recipe import Recipe
from mobex.validate.validator import VariantResult

LABELS_ASSET = "assets/labels.txt"
REFERENCE_STATS_ASSET = "assets/reference_stats.json"  # mobex.validate.drift reads it


def _metrics(chosen: VariantResult) -> dict:
    """What the manifest says about validation of the shipped variant: parity and gates.

    Latency is left out on purpose: it changes from run to run, and bundles must be reproducible.
    It is in the build's report.json.
    """
    return {
        "backend": chosen.backend,
        "parity": chosen.parity,
        "gates": {
            g["metric"]: {"value": g["value"], "limit": g["limit"], "passed": g["passed"]}
            for g in chosen.gates
            if g["metric"] != "p50_ms"
        },
    }


def _extras(target: Any, artifact: Any) -> dict:
    """The model's native-interface keys for the manifest: read at export time when the export recorded them."""
    return artifact.manifest_extras if artifact.manifest_extras is not None else target.manifest_extras(artifact.path)


def reference_stats_bytes(stats: dict) -> bytes:
    """Compact, canonical JSON (sorted keys): the same statistics give the same bytes."""
    return (json.dumps(stats, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n").encode()


def assemble_bundle(
    recipe: Recipe,
    chosen: VariantResult,
    target_options: Any,
    report_json: bytes,
    out_zip: Path,
    private_key: Path,
    *,
    staging: Path,
    source_date_epoch: int | None = None,
) -> Path:
    """Copy the shipped model and assets into `staging`, write the manifest, sign, zip to `out_zip`.

    Where the model sits, its format and the minimum OS come from its target (`target_options` are the
    target's options from the export job).
    """
    artifact = chosen.artifact
    assert artifact is not None, "only exported variants can ship"
    target = plugins.target(chosen.target)
    staging.mkdir(parents=True)
    rel = target.bundle_model_path(recipe.model.name)
    dest = staging / rel
    dest.parent.mkdir(parents=True)
    if artifact.path.is_dir():
        shutil.copytree(artifact.path, dest)
    else:
        shutil.copyfile(artifact.path, dest)
    labels = recipe.labels()
    if labels is not None:
        (staging / LABELS_ASSET).parent.mkdir(parents=True, exist_ok=True)
        (staging / LABELS_ASSET).write_text("\n".join(labels) + "\n", encoding="utf-8")
    stats_file = None
    if chosen.reference_stats is not None:
        stats_file = REFERENCE_STATS_ASSET
        (staging / stats_file).parent.mkdir(parents=True, exist_ok=True)
        (staging / stats_file).write_bytes(reference_stats_bytes(chosen.reference_stats))
    (staging / "report.json").write_bytes(report_json)

    epoch = resolve_source_date_epoch(source_date_epoch)
    if epoch is None:
        epoch = int(time.time())
    minimum_os = target.minimum_os(target_options, chosen.platform)
    inputs, outputs = chosen.io_dicts()  # as the model stores them, and as the original takes and returns them
    manifest = Manifest(
        name=recipe.model.name,
        version=recipe.model.version,
        platform=chosen.platform,
        created=iso_utc(epoch),
        model=model_section(
            path=rel,
            format=target.info.file_format,
            quantization=chosen.quantization,
            inputs=inputs,
            outputs=outputs,
            minimum_os=minimum_os,
            labels_file=LABELS_ASSET if labels is not None else None,
            **({"reference_stats_file": stats_file} if stats_file else {}),
            **_extras(target, artifact),
        ),
        labels=labels,
        preprocessing=recipe.preprocessing.record(),
        task=recipe.model.task,
        metrics=_metrics(chosen),
        provenance=provenance(recipe),
    )
    return build_bundle(staging, manifest, out_zip, private_key, source_date_epoch=epoch)
