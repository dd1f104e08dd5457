"""The three build reports: report.json (the contract), report.html (for people), junit.xml (for CI).

All three are written from the same dict, each completely or not at all (temp file + rename), also
when a gate fails: CI keeps them as artifacts and they say which gate failed and by how much.
The schema of report.json is documented in docs/report-schema.md; the HTML renderer is
mobex.validate.html.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from mobex import __version__
from mobex.datasources.base import Check
from mobex.files import write_atomic
from mobex.runtime.latency import HOST_NOTE
from mobex.validate.html import render_html

REPORT_SCHEMA = "https://mobex.dev/schemas/build-report/v1"


@dataclass(frozen=True)
class ReportInputs:
    """Everything report.json is assembled from, once, at the end of a build (see docs/report-schema.md).

    `variants` are the validated results (mobex.validate.validator.VariantResult), `shipped` maps each
    platform to the id of the variant it ships, `variant_notes` adds notes by variant id (the ship
    decision's), `pruning` is a mobex.prune.pruning.PruneResult or None, `training` its data set.
    """

    recipe: Any
    validation: Any
    calibration: Any
    reference: Any
    variants: tuple[Any, ...]
    shipped: dict[str, str]
    variant_notes: dict[str, tuple[str, ...]]
    failures: tuple[str, ...]
    rejected: tuple[str, ...]
    provenance: dict
    pruning: Any = None
    training: Any = None
    bundles: tuple[dict, ...] = ()
    timings: dict = field(default_factory=dict)
    baselines: dict = field(default_factory=dict)  # platform -> comparison with the release it replaces


def reference_output_checks(names: list[str], outputs: list) -> list[Check]:
    """One check per output: does the float model's output vary over the validation data at all?

    A constant output (a head that a ReLU zeroes, a random-init model) matches any export that outputs the
    same constant: parity then passes without telling a good export from a bad one, so the report says so."""
    import numpy as np

    checks = []
    for name, out in zip(names, outputs, strict=False):
        arr = np.asarray(out)
        if arr.size == 0 or not np.issubdtype(arr.dtype, np.number):
            continue
        lo, hi = float(np.min(arr)), float(np.max(arr))
        varies = hi > lo
        detail = (f"values in [{lo:.4g}, {hi:.4g}]" if varies else
                  f"every value is {lo:.4g} on all {arr.shape[0]} samples: parity against it cannot tell a good "
                  "export from a bad one (check the model's weights and the validation data)")  # fmt: skip
        checks.append(Check(f"reference output {name} varies", varies, detail))
    return checks


def build_report(r: ReportInputs) -> dict:
    """The report dict, in its documented key order."""
    recipe, validation, calibration, reference = r.recipe, r.validation, r.calibration, r.reference
    shipped_ids = set(r.shipped.values())
    variants = [v.to_dict(v.id in shipped_ids, r.variant_notes.get(v.id, ())) for v in r.variants]
    data = {
        "validation": {"path": str(validation.path), "samples": validation.num_samples},
        "calibration": {"path": str(calibration.path), "samples": calibration.num_samples},
    }
    checks = [c.to_dict() for c in validation.checks]
    checks += [c.to_dict() for c in calibration.checks] if calibration is not validation else []
    checks += [c.to_dict() for c in reference_output_checks(r.recipe.output_names(len(reference.outputs)),
                                                            reference.outputs)]  # fmt: skip
    reference_entry = {
        "backend": "torch",
        "metrics": reference.metrics,
        "latency": reference.latency,
        "latency_by_threads": reference.latency_by_threads,
    }
    if reference.cache is not None:
        reference_entry["cache"] = reference.cache
    if r.pruning is not None:
        reference_entry["model"] = "pruned"  # variants are compared with the pruned float model
        if r.training is not None:
            data["training"] = {"path": str(r.training.path), "samples": r.training.num_samples}
            checks += [c.to_dict() for c in r.training.checks]
        variants = [_with_drop_vs_original(v, r.pruning) for v in variants]
    by_id = {v.id: v for v in r.variants}
    report = {
        "schema": REPORT_SCHEMA,
        "mobex_version": __version__,
        "status": "passed" if not r.failures else "failed",
        "failures": list(r.failures),
        "recipe": {
            "path": str(recipe.path),
            "sha256": recipe.sha256,
            "name": recipe.model.name,
            "version": recipe.model.version,
            "task": recipe.model.task,
        },
        "data": data,
        "data_checks": checks,
        "reference": reference_entry,
        "variants": variants,
        "shipped": {platform: by_id[vid].request.spelled for platform, vid in r.shipped.items()},
        "bundles": list(r.bundles),
        "latency_note": HOST_NOTE,
        "provenance": r.provenance,
        "timings": r.timings,
        "rejected_variants": list(r.rejected),
    }
    if r.pruning is not None:
        report["pruning"] = r.pruning.to_dict()
    if r.baselines:
        report["baseline"] = r.baselines
    return report


def _with_drop_vs_original(variant: dict, pruning: Any) -> dict:
    """What pruning and quantization cost together: the variant's accuracy against the unpruned original."""
    parity = variant["parity"] or {}
    if pruning.metric != "accuracy" or parity.get("accuracy") is None:
        return variant
    return {**variant, "parity": {**parity, "accuracy_drop_vs_original": pruning.original - parity["accuracy"]}}


def report_json_bytes(report: dict) -> bytes:
    return (json.dumps(report, indent=2, sort_keys=False, allow_nan=False) + "\n").encode()


def write_reports(report: dict, out_dir: Path) -> dict[str, Path]:
    """report.json, report.html and junit.xml into out_dir."""
    paths = {
        "json": out_dir / "report.json",
        "html": out_dir / "report.html",
        "junit": out_dir / "junit.xml",
    }
    write_atomic(paths["json"], report_json_bytes(report))
    write_atomic(paths["html"], render_html(report).encode())
    write_atomic(paths["junit"], render_junit(report))
    return paths


def render_junit(report: dict) -> bytes:
    """One <testcase> per gate per variant, plus one per variant that could not be converted."""
    recipe = report.get("recipe") or {}
    suites = ET.Element("testsuites", name=f"mobex {recipe.get('name', '?')} {recipe.get('version', '')}".strip())
    by_platform: dict[str, list[dict]] = {}
    for variant in report.get("variants", []):
        by_platform.setdefault(variant.get("platform", "unknown"), []).append(variant)
    for platform, variants in sorted(by_platform.items()):
        suite = ET.SubElement(suites, "testsuite", name=f"mobex.{platform}")
        tests = failures = 0
        for variant in variants:
            classname = f"mobex.{platform}.{variant.get('quantization', '?')}"
            status = variant.get("status", "not produced")
            cases = variant.get("gates") or [{"metric": "convert", "passed": False, "message": status}]
            for gate in cases:
                tests += 1
                message = str(gate.get("message", gate.get("metric", "?")))
                case = ET.SubElement(suite, "testcase", classname=classname, name=str(gate.get("metric", "?")))
                if not gate.get("passed"):
                    failures += 1
                    failure = ET.SubElement(case, "failure", message=message, type="GateFailed")
                    failure.text = message
                else:
                    ET.SubElement(case, "system-out").text = message
        suite.set("tests", str(tests))
        suite.set("failures", str(failures))
        suite.set("errors", "0")
    ET.indent(suites)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="utf-8") + b"\n"


# Fields that change from run to run (wall times, latency measurements, absolute paths of this
# machine). The copy of the report inside a bundle leaves them out, so that two builds of the
# same recipe with the same SOURCE_DATE_EPOCH give byte-identical bundles (signature aside).
_VOLATILE_VARIANT_KEYS = ("latency", "latency_by_threads", "export_seconds", "validate_seconds", "cache")


# Measured (not decided) parts of a variant's quantization_details: latencies, wall times.
_VOLATILE_DETAILS = ("cost", "search", "search_seconds", "sensitivity_ran_on")


def _decided(details: dict) -> dict:
    out = {k: v for k, v in details.items() if k not in _VOLATILE_DETAILS}
    finetune = out.get("finetune")
    if isinstance(finetune, dict) and isinstance(finetune.get("trials"), list):
        trials = [{k: v for k, v in t.items() if k != "seconds"} for t in finetune["trials"]]
        out["finetune"] = {**finetune, "trials": trials}
    recurrent = out.get("recurrent")
    if isinstance(recurrent, dict):  # the decision stays; the candidates' p50 does not
        out["recurrent"] = {
            k: ({m: x for m, x in v.items() if m != "p50_ms"} if isinstance(v, dict) else v)
            for k, v in recurrent.items()
        }
    return out


def bundled_report(report: dict) -> dict:
    """The reproducible subset of a build report that goes into bundles."""
    out = json.loads(json.dumps(report))  # deep copy
    out.pop("timings", None)
    out.pop("bundles", None)
    out["recipe"]["path"] = Path(out["recipe"]["path"]).name
    for entry in out.get("data", {}).values():
        entry["path"] = Path(entry["path"]).name
    out["reference"] = {"backend": out["reference"]["backend"], "metrics": out["reference"]["metrics"]}
    for variant in out["variants"]:
        for key in _VOLATILE_VARIANT_KEYS:
            variant.pop(key, None)
        variant["gates"] = [g for g in variant["gates"] if g["metric"] != "p50_ms"]
        details = variant.get("quantization_details")
        if isinstance(details, dict):  # keep what was decided, drop measured timings
            variant["quantization_details"] = _decided(details)
    out["note"] = "latency and wall times vary between runs: see the build's report.json"
    return out
