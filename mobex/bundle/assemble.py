"""Lay out one platform's bundle from the shipped variant, then hand it to the signer and zipper.

Layout (DESIGN.md): manifest.json, model/<name>.tflite or model/<Name>.mlpackage/..., assets/
(labels, reference statistics for `mobex drift`), report.json, signature.sigstore.json.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from mobex.bundle.manifest import Manifest, iso_utc, model_section, resolve_source_date_epoch
from mobex.bundle.verify import build_bundle
from mobex.provenance import provenance
from mobex.recipe import Recipe
from mobex.validate.validator import VariantReport

LABELS_ASSET = "assets/labels.txt"
REFERENCE_STATS_ASSET = "assets/reference_stats.json"  # mobex.validate.drift reads it


def swift_type_name(name: str) -> str:
    """'digits-cnn' -> 'DigitsCnn': Xcode turns the .mlpackage file name into a Swift class name."""
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", name) if p]
    joined = "".join(p[:1].upper() + p[1:] for p in parts) or "Model"
    return joined if not joined[0].isdigit() else "Model" + joined


def model_relpath(recipe: Recipe, platform: str) -> str:
    if platform == "android":
        return f"model/{recipe.model.name}.tflite"
    return f"model/{swift_type_name(recipe.model.name)}.mlpackage"


def _metrics(chosen: VariantReport) -> dict:
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


def _native_interface(chosen: VariantReport) -> dict:
    """Core ML image inputs and classifier outputs (mobex.converters.coreml_io), as the package declares them."""
    if chosen.target != "coreml" or chosen.artifact is None:
        return {}
    from mobex.converters.coreml import read_interface

    return read_interface(chosen.artifact.path)


def reference_stats_bytes(stats: dict) -> bytes:
    """Compact, canonical JSON (sorted keys): the same statistics give the same bytes."""
    return (json.dumps(stats, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n").encode()


def assemble_bundle(
    recipe: Recipe,
    chosen: VariantReport,
    report_json: bytes,
    out_zip: Path,
    private_key: Path,
    *,
    staging: Path,
    source_date_epoch: int | None = None,
) -> Path:
    """Copy the shipped model and assets into `staging`, write the manifest, sign, zip to `out_zip`."""
    artifact = chosen.artifact
    assert artifact is not None, "only exported variants can ship"
    staging.mkdir(parents=True)
    rel = model_relpath(recipe, chosen.platform)
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
    if chosen.platform == "android":
        minimum_os: dict = {"android_min_sdk": recipe.android.min_sdk}
    else:
        minimum_os = {"ios": recipe.ios.minimum_deployment_target}
    manifest = Manifest(
        name=recipe.model.name,
        version=recipe.model.version,
        platform=chosen.platform,
        created=iso_utc(epoch),
        model=model_section(
            path=rel,
            format="tflite" if chosen.platform == "android" else "mlpackage",
            quantization=chosen.quantization,
            inputs=artifact.inputs,
            outputs=artifact.outputs,
            minimum_os=minimum_os,
            labels_file=LABELS_ASSET if labels is not None else None,
            **({"reference_stats_file": stats_file} if stats_file else {}),
            **_native_interface(chosen),
        ),
        labels=labels,
        preprocessing=recipe.preprocessing.record(),
        task=recipe.model.task,
        metrics=_metrics(chosen),
        provenance=provenance(recipe),
    )
    return build_bundle(staging, manifest, out_zip, private_key, source_date_epoch=epoch)
