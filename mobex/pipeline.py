"""`mobex build`: the stages in order, as in DESIGN.md's diagram.

    recipe -> data checks -> load model -> [prune] -> reference run -> export (android | ios, in
           parallel worker processes) -> validate every variant -> gates + choose what ships
           -> bundle + sign -> reports

The pipeline knows the order, not the details: each stage is a function in its own module.
Everything is built in a hidden temporary folder inside `--out` (`.mobex-build-*`, removed at the
end) and each finished file is moved into `--out` with an atomic rename, so `--out` never holds a
half-written file; when a gate fails, only the three reports are moved in.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mobex import __version__
from mobex import workdir as workdirs
from mobex.data import Dataset, load_validation_and_calibration
from mobex.errors import DataError, GateFailed
from mobex.export import (
    ExportFailure,
    PlatformExport,
    example_inputs,
    export_platform,
    export_platform_in_child,
    int8_training_path,
    output_names,
)
from mobex.provenance import provenance
from mobex.recipe import Recipe
from mobex.recipe_paths import check_labels_fit
from mobex.validate.latency import HOST_NOTE
from mobex.validate.report import REPORT_SCHEMA, bundled_report, report_json_bytes, write_atomic, write_reports
from mobex.validate.validator import (
    VariantReport,
    failed_export_report,
    run_reference,
    validate_variant,
)
from mobex.workers import pool_options

# Variants that calibrate activation ranges on the recipe's calibration data, per platform.
STATIC_VARIANTS = {"android": {"int8"}, "ios": {"w8a8"}}


@dataclass
class BuildOptions:
    out_dir: Path
    key: Path | None = None
    jobs: int = 2
    source_date_epoch: int | None = None


@dataclass
class BuildResult:
    report: dict
    bundles: list[Path]
    report_paths: dict[str, Path]
    dev_key_created: bool = False

    @property
    def passed(self) -> bool:
        return self.report["status"] == "passed"


@dataclass
class StageClock:
    """Wall time per stage for report.json, with an optional callback to show progress."""

    on_stage: Callable[[str], None] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.on_stage:
            self.on_stage(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - start, 3)


def _check_int8_training(recipe: Recipe) -> None:
    """Load (and so check: shapes, dtypes, NaN/inf) the training data the int8 variant will use
    (`export.int8_training_path`)."""
    if recipe.android is None or "int8" not in recipe.android.variants:
        return
    path = int8_training_path(recipe)
    if path is None:
        return
    from mobex.data import load_dataset

    load_dataset(recipe, "training", path)


def build(recipe: Recipe, options: BuildOptions, on_stage: Callable[[str], None] | None = None) -> BuildResult:
    """Run the whole flow. Raises GateFailed (after writing the reports) when nothing may ship."""
    _check_out_dir(options.out_dir)
    clock = StageClock(on_stage)
    total_start = time.perf_counter()
    with clock.stage("data checks"):
        validation, calibration = load_validation_and_calibration(recipe)
        _check_calibration(recipe, calibration)
        from mobex.quantize.prune import load_finetune_data, prune_model, save_pruned_model

        training = load_finetune_data(recipe)  # None unless [prune.finetune]
        _check_int8_training(recipe)  # bad [quantization.finetune] data fails here, before any conversion
    with clock.stage("load model"):
        from mobex.sources import load_model

        model = load_model(recipe)
    pruning = None
    if recipe.prune is not None:  # once, here: the workers export the pruned model, the gates compare with it
        with clock.stage("prune"):
            pruning = prune_model(model, recipe, example_inputs(recipe, validation), training, validation)
            model = pruning.model
    with clock.stage("reference run"):
        reference = run_reference(model, recipe, validation)
    check_labels_fit(recipe, reference.outputs)  # issue 12: a labels file must fit the class output
    names = output_names(recipe, len(reference.outputs))

    options.out_dir.mkdir(parents=True, exist_ok=True)
    workdir = workdirs.create(options.out_dir, workdirs.BUILD_PREFIX)  # issue 12: locked; dead builds' removed
    try:
        with clock.stage("export"):
            pruned_path = None
            if pruning is not None:
                pruned_path = str(save_pruned_model(model, example_inputs(recipe, validation), workdir / "pruned.pt2"))
            exports = _export(recipe, workdir, options.jobs, pruned_path)
        for exp in exports:
            clock.timings[f"export {exp.platform}"] = round(exp.seconds, 3)
        with clock.stage("validate"):
            variants = _validate(recipe, exports, validation, reference, names)
        shipped, failures, rejected = choose_shipped(recipe, variants)
        prune_gate = pruning.gate() if pruning is not None else None
        if prune_gate is not None and not prune_gate["passed"]:  # the pruned model itself is too far off
            failures.append(prune_gate["message"])
            for v in shipped.values():
                v.shipped = False
            shipped = {}
        status = "passed" if not failures else "failed"
        report = _report(recipe, validation, calibration, reference, variants, shipped, failures, status, clock)
        report["rejected_variants"] = rejected
        if pruning is not None:
            _add_pruning(report, pruning, training)
        bundles: list[tuple[str, Path]] = []
        dev_key_created = False
        final = workdir / "final"
        final.mkdir()
        if status == "passed":
            with clock.stage("bundle + sign"):
                bundles, dev_key_created = _bundles(recipe, report, variants, shipped, workdir, final, options)
            report["bundles"] = [
                {"platform": platform, "file": path.name, "size_bytes": path.stat().st_size}
                for platform, path in bundles
            ]
        clock.timings["total"] = round(time.perf_counter() - total_start, 3)
        report["timings"] = clock.timings
        write_reports(report, final)
        moved = _move_into(final, options.out_dir)
    finally:
        workdirs.remove(workdir)
    result = BuildResult(
        report=report,
        bundles=[options.out_dir / path.name for _, path in bundles],
        report_paths={k: options.out_dir / p.name for k, p in moved.items()},
        dev_key_created=dev_key_created,
    )
    if status != "passed":
        raise GateFailed(
            "gates failed, nothing shipped:\n  " + "\n  ".join(failures + report["rejected_variants"]),
            f"see {result.report_paths['html']} for every variant's numbers",
        )
    return result


def export_only(recipe: Recipe, out_dir: Path, jobs: int = 2) -> list[Path]:
    """`mobex export`: convert and quantize every variant into out_dir, without validating or bundling.

    For users who validate elsewhere; nothing here says a variant is fit to ship (only `build` does).
    """
    _check_out_dir(out_dir)
    validation, calibration = load_validation_and_calibration(recipe)
    _check_calibration(recipe, calibration)
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = workdirs.create(out_dir, workdirs.EXPORT_PREFIX)
    written: list[Path] = []
    try:
        exports = _export(recipe, workdir, jobs)
        problems = [f"{e.platform}/{f.quantization}: {f.message}" for e in exports for f in e.failures]
        for exp in exports:
            for variant in exp.variants:
                target = (
                    out_dir / f"{recipe.model.name}-{recipe.model.version}-{variant.quantization}{variant.path.suffix}"
                )
                if target.is_dir():
                    shutil.rmtree(target)
                if variant.path.is_file():
                    os.chmod(variant.path, 0o644)  # converters write private temp files
                os.replace(variant.path, target)
                written.append(target)
    finally:
        workdirs.remove(workdir)
    if problems:
        from mobex.errors import ConversionError

        raise ConversionError("some variants could not be exported:\n  " + "\n  ".join(problems))
    return written


def _add_pruning(report: dict, pruning, training: Dataset | None) -> None:  # noqa: ANN001 - PruneResult
    """The report's `pruning` entry, and what pruning and quantization cost together per variant."""
    report["pruning"] = pruning.to_dict()
    report["reference"]["model"] = "pruned"  # variants are compared with the pruned float model
    if training is not None:
        report["data"]["training"] = {"path": str(training.path), "samples": training.num_samples}
        report["data_checks"] += [c.to_dict() for c in training.checks]
    for v in report["variants"]:
        if pruning.metric == "accuracy" and (v["parity"] or {}).get("accuracy") is not None:
            v["parity"]["accuracy_drop_vs_original"] = pruning.original - v["parity"]["accuracy"]


def _check_out_dir(out_dir: Path) -> None:
    """Refuse an output path we cannot write into before any work starts."""
    workdirs.check_out_dir(out_dir)


def _check_calibration(recipe: Recipe, calibration: Dataset) -> None:
    """Static quantization needs enough calibration samples: refuse before any conversion starts."""
    wanted = sorted(STATIC_VARIANTS["android"] & set(recipe.android.variants if recipe.android else []))
    wanted += sorted(STATIC_VARIANTS["ios"] & set(recipe.ios.variants if recipe.ios else []))
    if not wanted:
        return
    have = calibration.num_samples
    need = recipe.data.min_calibration_samples
    if have < need:
        source = "[data].calibration" if recipe.data.calibration else "[data].validation (no [data].calibration set)"
        raise DataError(
            f"variant(s) {', '.join(wanted)} need at least {need} calibration samples; {source} has {have}",
            "add representative samples to the calibration data or lower [data].min_calibration_samples",
        )


def _export(recipe: Recipe, workdir: Path, jobs: int, model_path: str | None = None) -> list[PlatformExport]:
    platforms = [p for p in ("android", "ios") if getattr(recipe, p) is not None]
    if jobs <= 1 or len(platforms) == 1:
        return [export_platform(str(recipe.path), p, str(workdir), model_path=model_path) for p in platforms]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(platforms), mp_context=ctx, **pool_options()) as pool:  # die with us
        futures = {
            p: pool.submit(
                export_platform_in_child, str(recipe.path), p, str(workdir), str(workdir / f"{p}.log"), model_path
            )
            for p in platforms
        }
        results = []
        for platform, future in futures.items():
            try:
                results.append(future.result())
            except Exception as exc:  # the whole process died (e.g. a converter segfault)
                variants = getattr(recipe, platform).variants
                failed = PlatformExport(platform)
                failed.failures = [ExportFailure(v, f"{platform} export process failed: {exc}") for v in variants]
                results.append(failed)
        return results


def _validate(recipe: Recipe, exports, validation, reference, names) -> list[VariantReport]:  # noqa: ANN001
    reports: list[VariantReport] = []
    for exp in exports:
        section = getattr(recipe, exp.platform)
        target = "tflite" if exp.platform == "android" else "coreml"
        by_name = {v.quantization: v for v in exp.variants}
        failures = {f.quantization: f.message for f in exp.failures}
        for variant in section.variants:  # recipe order
            if variant in by_name:
                reports.append(validate_variant(by_name[variant], recipe, validation, reference, names))
            else:
                message = failures.get(variant, "not produced")
                reports.append(failed_export_report(exp.platform, target, variant, message, recipe))
    return reports


def choose_shipped(
    recipe: Recipe, variants: list[VariantReport]
) -> tuple[dict[str, VariantReport], list[str], list[str]]:
    """Pick one passing variant per platform by the recipe's `ship` (a name or a policy).

    Returns (shipped per platform, blocking failures, rejected candidates). A candidate that fails
    its gates is rejected and reported; the build fails only when a platform has nothing to ship,
    or when the recipe names the variant to ship and that one failed.
    """
    shipped: dict[str, VariantReport] = {}
    failures: list[str] = []
    rejected: list[str] = []
    for platform in ("android", "ios"):
        section = getattr(recipe, platform)
        if section is None:
            continue
        candidates = [v for v in variants if v.platform == platform]
        for v in candidates:
            if not v.passed:
                failed = [g["message"] for g in v.gates if not g["passed"]] or [v.status]
                rejected.append(f"{platform}/{v.quantization}: " + "; ".join(failed))
        passing = [v for v in candidates if v.passed]
        if section.ship not in ("smallest-passing", "fastest-passing"):
            chosen = next((v for v in passing if v.quantization == section.ship), None)
            if chosen is None:
                failures.append(f"{platform}: ship = {section.ship!r} did not pass its gates")
                continue
        elif not passing:
            failures.append(f"{platform}: no variant passed its gates")
            continue
        elif section.ship == "fastest-passing" and all(v.latency for v in passing):
            chosen = min(passing, key=lambda v: (v.latency["p50_ms"], v.size_bytes))
        else:  # smallest-passing, or fastest-passing without latency numbers (Core ML off macOS)
            chosen = min(passing, key=lambda v: (v.size_bytes, v.quantization))
            if section.ship == "fastest-passing":
                chosen.notes.append("fastest-passing fell back to smallest-passing: no latency on this host")
        chosen.shipped = True
        shipped[platform] = chosen
    return shipped, failures, rejected


def _report(recipe, validation, calibration, reference, variants, shipped, failures, status, clock) -> dict:  # noqa: ANN001
    return {
        "schema": REPORT_SCHEMA,
        "mobex_version": __version__,
        "status": status,
        "failures": failures,
        "recipe": {
            "path": str(recipe.path),
            "sha256": recipe.sha256,
            "name": recipe.model.name,
            "version": recipe.model.version,
            "task": recipe.model.task,
        },
        "data": {
            "validation": {"path": str(validation.path), "samples": validation.num_samples},
            "calibration": {"path": str(calibration.path), "samples": calibration.num_samples},
        },
        "data_checks": [c.to_dict() for c in validation.checks]
        + ([c.to_dict() for c in calibration.checks] if calibration is not validation else []),
        "reference": {
            "backend": "torch",
            "metrics": reference.metrics,
            "latency": reference.latency,
            "latency_by_threads": reference.latency_by_threads,
        },
        "variants": [v.to_dict() for v in variants],
        "shipped": {p: v.quantization for p, v in shipped.items()},
        "bundles": [],
        "latency_note": HOST_NOTE,
        "provenance": provenance(recipe),
        "timings": clock.timings,
    }


def _bundles(recipe, report, variants, shipped, workdir: Path, final: Path, options: BuildOptions):  # noqa: ANN001, ANN202
    from mobex.bundle.assemble import assemble_bundle
    from mobex.bundle.keys import ensure_dev_key

    key, created = (options.key, False) if options.key else ensure_dev_key()
    bundles = []
    for platform, chosen in shipped.items():
        out_zip = final / f"{recipe.model.name}-{recipe.model.version}-{platform}.zip"
        assemble_bundle(
            recipe,
            chosen,
            report_json_bytes(bundled_report(report)),
            out_zip,
            key,
            staging=workdir / f"stage-{platform}",
            source_date_epoch=options.source_date_epoch,
        )
        bundles.append((platform, out_zip))
    return bundles, created


def _move_into(final: Path, out_dir: Path) -> dict[str, Path]:
    """Move every finished file into out_dir, each with an atomic rename; reports last."""
    moved = {}
    order = sorted(final.iterdir(), key=lambda p: (p.suffix != ".zip", p.name))
    for path in order:
        target = out_dir / path.name
        os.replace(path, target)
        key = {"report.json": "json", "report.html": "html", "junit.xml": "junit"}.get(path.name)
        if key:
            moved[key] = target
    return moved


__all__ = ["BuildOptions", "BuildResult", "build", "choose_shipped", "write_atomic"]
