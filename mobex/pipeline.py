"""`mobex build`: the stages in order, as in DESIGN.md's diagram.

    recipe -> data checks -> load model -> [prune] -> reference run -> export (one job per target:
           tflite | coreml | executorch, in parallel worker processes) -> validate every variant in its
           target's runtime -> gates + choose what each platform ships -> bundle + sign -> reports

The pipeline knows the order, not the details: each stage is a function in its own module, and the
targets and their variants are plugins (mobex.plugins, mobex.targets); no target is named here.
Everything is built in a hidden temporary folder inside `--out` (`.mobex-build-*`, removed at the
end) and each finished file is moved into `--out` with an atomic rename, so `--out` never holds a
half-written file; when a gate fails, only the three reports are moved in.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from mobex import plugins
from mobex import workdir as workdirs
from mobex.cache.build import BuildCache
from mobex.data import Dataset, example_inputs, load_validation_and_calibration
from mobex.errors import DataError, GateFailed
from mobex.executor import Executor, ValidationTask
from mobex.export import ExportJob, TargetExport, plan_exports, run_exports
from mobex.provenance import provenance
from mobex.recipe import SHIP_POLICIES, Recipe
from mobex.recipe_paths import check_labels_fit
from mobex.validate.report import ReportInputs, build_report, bundled_report, report_json_bytes, write_reports
from mobex.validate.validator import (
    ValidationPlan,
    VariantResult,
    failed_export_report,
    run_reference,
)


@dataclass
class BuildOptions:
    out_dir: Path
    key: Path | None = None
    jobs: int = 2
    source_date_epoch: int | None = None
    # The release this build replaces (mobex.release.baseline): bundle files, or a registry with a channel.
    baselines: list[str] = field(default_factory=list)
    baseline_channel: str | None = None
    baseline_key: Path | None = None  # default for bundle files: the public half of --key (or the dev key)
    baseline_token: str | None = None
    cache: bool = True  # reuse unchanged work from the build cache (mobex.cache); False: `--no-cache`
    executor: Executor | None = None  # where export jobs and validations run (None: here, mobex.executor)


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


@dataclass(frozen=True)
class ShipDecision:
    """Which variant each platform ships (by id), why a platform ships nothing, what was rejected, and notes
    the decision adds to variants. A pure value: `choose_shipped` makes it from the validated results."""

    shipped: dict[str, str]
    failures: tuple[str, ...] = ()
    rejected: tuple[str, ...] = ()
    notes: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def blocked(self, why: str) -> ShipDecision:
        """The same decision with nothing shipped, because of `why` (e.g. the pruned model failed its gate)."""
        return ShipDecision({}, (*self.failures, why), self.rejected, self.notes)


def build(recipe: Recipe, options: BuildOptions, on_stage: Callable[[str], None] | None = None) -> BuildResult:
    """Run the whole flow. Raises GateFailed (after writing the reports) when nothing may ship."""
    _check_out_dir(options.out_dir)
    clock = StageClock(on_stage)
    total_start = time.perf_counter()
    with clock.stage("data checks"):
        validation, calibration = load_validation_and_calibration(recipe)
        _check_calibration(recipe, calibration)
        from mobex.prune.pruning import load_finetune_data, save_pruned_model
        from mobex.sources import weights_fingerprint

        training = load_finetune_data(recipe)  # None unless [prune.finetune]
        cache = BuildCache.open(recipe, validation, calibration, enabled=options.cache, executor=options.executor)
        _preflight(recipe, skip=cache.cached_targets())  # e.g. bad int8 training data fails here
    model, pruning, reference = _model_and_reference(recipe, validation, training, cache, clock)
    fingerprint = weights_fingerprint(model) if model is not None and pruning is None else None
    check_labels_fit(recipe, reference.outputs)  # a labels file must fit the class output
    names = recipe.output_names(len(reference.outputs))

    options.out_dir.mkdir(parents=True, exist_ok=True)
    workdir = workdirs.create(options.out_dir, workdirs.BUILD_PREFIX)  # issue 12: locked; dead builds' removed
    try:
        with clock.stage("export"):
            pruned_path = None
            if pruning is not None:
                pruned_path = str(save_pruned_model(model, example_inputs(recipe, validation), workdir / "pruned.pt2"))
            jobs = plan_exports(recipe, workdir, names, pruned_path, fingerprint)
            exports = cache.run_exports(jobs, options.jobs)
        for exp in exports:
            clock.timings[f"export {exp.target}"] = round(exp.seconds, 3)
        plan = ValidationPlan.of(recipe, names)
        with clock.stage("validate"):
            variants = _validate(recipe, plan, jobs, exports, validation, reference, cache)
        decision = choose_shipped(ship_policies(recipe), variants)
        prune_gate = pruning.gate() if pruning is not None else None
        if prune_gate is not None and not prune_gate["passed"]:  # the pruned model itself is too far off
            decision = decision.blocked(prune_gate["message"])
        comparisons: dict[str, dict] = {}
        if options.baselines and decision.shipped:
            with clock.stage("baseline"):
                comparisons, breaches = _against_baselines(recipe, options, decision, variants, plan, validation,
                                                           reference)  # fmt: skip
            for breach in breaches:
                decision = decision.blocked(breach)
        inputs = ReportInputs(
            recipe=recipe,
            validation=validation,
            calibration=calibration,
            reference=reference,
            variants=tuple(variants),
            shipped=decision.shipped,
            variant_notes=decision.notes,
            failures=decision.failures,
            rejected=decision.rejected,
            provenance=provenance(recipe),
            pruning=pruning,
            training=training if pruning is not None else None,
            baselines=comparisons,
        )
        final = workdir / "final"
        final.mkdir()
        bundles: list[tuple[str, Path]] = []
        dev_key_created = False
        if not decision.failures:
            with clock.stage("bundle + sign"):
                by_id = {v.id: v for v in variants}
                job_options = {job.target: job.options for job in jobs}
                shipped = {p: by_id[vid] for p, vid in decision.shipped.items()}
                bundled = report_json_bytes(bundled_report(build_report(inputs)))
                bundles, dev_key_created = _bundles(recipe, bundled, shipped, job_options, workdir, final, options)
        clock.timings["total"] = round(time.perf_counter() - total_start, 3)
        listed = tuple(
            {"platform": platform, "file": path.name, "size_bytes": path.stat().st_size} for platform, path in bundles
        )
        report = build_report(replace(inputs, bundles=listed, timings=dict(clock.timings)))
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
    if not result.passed:
        raise GateFailed(
            "gates failed, nothing shipped:\n  " + "\n  ".join(report["failures"] + report["rejected_variants"]),
            f"see {result.report_paths['html']} for every variant's numbers",
        )
    return result


def _model_and_reference(recipe: Recipe, validation: Dataset, training, cache: BuildCache, clock: StageClock):  # noqa: ANN001, ANN202
    """The model (None when the reference run comes from the cache: then it is never loaded), the pruning
    result (None without [prune]) and the reference run."""
    from mobex.prune.pruning import prune_model
    from mobex.sources import load_model

    model = pruning = None
    if recipe.prune is not None or not cache.has_reference():
        with clock.stage("load model"):
            model = load_model(recipe)
    if recipe.prune is not None:  # once, here: the workers export the pruned model, the gates compare with it
        with clock.stage("prune"):
            pruning = prune_model(model, recipe, example_inputs(recipe, validation), training, validation)
            model = pruning.model
    with clock.stage("reference run"):
        reference = cache.reference(
            lambda: run_reference(model if model is not None else load_model(recipe), recipe, validation)
        )
    return model, pruning, reference


def _preflight(recipe: Recipe, skip: set[str] = frozenset()) -> None:  # noqa: B006 - never mutated
    """Each target's up-front checks of the data its requested variants will read (not for `skip`: targets
    whose every variant comes from the cache, made from the same data bytes, which passed these checks)."""
    requests = recipe.requests()
    for info in plugins.targets():
        mine = [r for r in requests if r.target == info.name]
        if mine and info.name not in skip:
            plugins.target(info.name).preflight(recipe, mine)


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
        names = recipe.output_names(_output_count(recipe, validation))
        exports = run_exports(plan_exports(recipe, workdir, names), jobs)
        problems = [f"{f.request.platform}/{f.request.spelled}: {f.message}" for e in exports for f in e.failures]
        for built in (b for e in exports for b in e.variants):
            variant = built.artifact
            label = built.request.spelled.replace(":", "-")
            target = out_dir / f"{recipe.model.name}-{recipe.model.version}-{label}{variant.path.suffix}"
            if target in written:
                continue  # a variant two platforms share is written once
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


def _output_count(recipe: Recipe, validation: Dataset) -> int:
    """How many tensors the model returns on the first validation batch (to name them)."""
    import torch

    from mobex.runtime.torch_model import flatten_outputs
    from mobex.sources import load_model

    with torch.inference_mode():
        return len(flatten_outputs(load_model(recipe)(*example_inputs(recipe, validation).values())))


def _check_out_dir(out_dir: Path) -> None:
    """Refuse an output path we cannot write into before any work starts."""
    workdirs.check_out_dir(out_dir)


def _check_calibration(recipe: Recipe, calibration: Dataset) -> None:
    """Variants that calibrate activation ranges need enough calibration samples: refuse before any conversion."""
    wanted = [r.spelled for r in recipe.requests() if r.spec.calibration]
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


def _validate(
    recipe: Recipe, plan: ValidationPlan, jobs: list[ExportJob], exports: list[TargetExport], validation: Dataset,
    reference,  # noqa: ANN001
    cache: BuildCache,
) -> list[VariantResult]:
    """Every requested variant's result, in recipe order: validated, or failed with its conversion's reason."""
    options = {job.target: job.options for job in jobs}
    built = {(b.request.platform, b.request.spelled): b for e in exports for b in e.variants}
    failed = {(f.request.platform, f.request.spelled): f.message for e in exports for f in e.failures}
    requests = [r for r in recipe.requests() if (r.platform, r.spelled) in built]
    tasks = [ValidationTask(built[(r.platform, r.spelled)], options[r.target]) for r in requests]
    validated = iter(cache.validate_all(tasks, plan, validation, reference))  # from the cache, or validated now
    results = []
    for request in recipe.requests():
        key = (request.platform, request.spelled)
        if key in built:
            results.append(next(validated))
        else:
            results.append(failed_export_report(request, failed.get(key, "not produced"), plan))
    return results


def _against_baselines(
    recipe: Recipe, options: BuildOptions, decision: ShipDecision, variants: list[VariantResult],
    plan: ValidationPlan, validation: Dataset, reference,  # noqa: ANN001
) -> tuple[dict[str, dict], list[str]]:
    """Each shipped variant next to the release it replaces, and the [release] budgets it breaks (messages)."""
    from mobex.release.baseline import load_baselines
    from mobex.release.budgets import evaluate_budgets
    from mobex.release.compare import compare

    by_id = {v.id: v for v in variants}
    comparisons, breaches = {}, []
    key = options.baseline_key or _public_key(options)
    with load_baselines(options.baselines, key=key, model=recipe.model.name, platforms=list(decision.shipped),
                        channel=options.baseline_channel, token=options.baseline_token) as baselines:  # fmt: skip
        for platform, variant_id in decision.shipped.items():
            if platform not in baselines:
                continue
            comparison = compare(baselines[platform], by_id[variant_id], recipe.model.version, plan, validation,
                                 reference)  # fmt: skip
            budgets = evaluate_budgets(recipe.release, comparison)
            comparisons[platform] = replace(comparison, budgets=tuple(b.to_dict() for b in budgets)).to_dict()
            breaches += [f"{platform}: release budget {b.message}" for b in budgets if not b.passed]
    return comparisons, breaches


def _public_key(options: BuildOptions) -> Path:
    """The public key that verifies bundle baselines by default: that of the key this build signs with."""
    from mobex.bundle.keys import dev_key_path, public_path_for

    public = public_path_for(options.key) if options.key else public_path_for(dev_key_path())
    if not public.is_file():
        from mobex.errors import UsageError

        raise UsageError(f"--baseline: no public key {public} to verify the previous bundles with",
                         "pass --baseline-key PUB.pem (the key the previous release was signed with)")  # fmt: skip
    return public


def ship_policies(recipe: Recipe) -> dict[str, str]:
    """Platform -> its `ship` setting (a policy or a variant name), for the platforms the recipe builds."""
    return {section.PLATFORM: section.ship for section in recipe.sections()}


# An int8-compute variant is "slower" than the fastest float variant when its p50 is above by more than this
# fraction and by more than SLOWER_MIN_MS: two timings of one model in one build differ by several percent on a
# shared host, and by a microsecond or so for models that run in microseconds (docs/validation.md).
SLOWER_TOLERANCE = 0.10
SLOWER_MIN_MS = 0.002


def choose_shipped(policies: dict[str, str], variants: list[VariantResult]) -> ShipDecision:
    """Pick one passing variant per platform by its `ship` setting (a variant name or a policy).

    A candidate that fails its gates is rejected and reported; so is a variant that computes in int8 and is
    slower than the fastest float variant of the same target in this build (`_slower_than_float`, with the one
    line that says why). A platform fails only when it has nothing to ship, or when the recipe names the variant
    to ship and that one was rejected. `fastest-passing` needs every passing candidate timed; otherwise it falls
    back to `smallest-passing` and says so.
    """
    shipped: dict[str, str] = {}
    failures: list[str] = []
    rejected: list[str] = []
    notes: dict[str, tuple[str, ...]] = {}
    for platform, ship in policies.items():
        candidates = [v for v in variants if v.platform == platform]
        for v in candidates:
            if not v.passed:
                failed = [g["message"] for g in v.gates if not g["passed"]] or [v.status]
                rejected.append(f"{v.id}: " + "; ".join(failed))
        slow, uncompared = _slower_than_float(candidates)
        rejected.extend(why for vid, why in slow.items() if any(v.id == vid and v.passed for v in candidates))
        for vid, why in {**slow, **uncompared}.items():  # a variant that failed its gates is told it is slow too
            notes[vid] = (*notes.get(vid, ()), why)
        passing = [v for v in candidates if v.passed and v.id not in slow]
        if ship not in SHIP_POLICIES:
            chosen = next((v for v in passing if v.request.spelled == ship), None)
            if chosen is None:
                too_slow = any(v.request.spelled == ship and v.id in slow for v in candidates)
                failures.append(
                    f"{platform}: ship = {ship!r} " + ("is slower than float" if too_slow else "did not pass its gates")
                )
                continue
        elif not passing:
            failures.append(f"{platform}: no variant passed its gates")
            continue
        elif ship == "fastest-passing" and all(v.latency for v in passing):
            chosen = min(passing, key=lambda v: (v.latency["p50_ms"], v.size_bytes))
        else:  # smallest-passing, or fastest-passing without latency numbers (Core ML off macOS)
            chosen = min(passing, key=lambda v: (v.size_bytes, v.request.spelled))
            if ship == "fastest-passing":
                notes[chosen.id] = ("fastest-passing fell back to smallest-passing: no latency on this host",)
        shipped[platform] = chosen.id
    return ShipDecision(shipped, tuple(failures), tuple(rejected), notes)


def _slower_than_float(candidates: list[VariantResult]) -> tuple[dict[str, str], dict[str, str]]:
    """Int8-compute variants slower than the fastest float variant (fp32/fp16 family, float compute) of their
    target, measured in this build: id -> why. And id -> why no comparison was made (no float variant of that
    target in the build, or one of the two not timed): no comparison is invented."""
    from mobex.validate.delegation import slower_line

    slow: dict[str, str] = {}
    uncompared: dict[str, str] = {}
    for v in candidates:
        if v.request.spec.compute != "int8" or v.status.startswith("conversion failed"):
            continue
        floats = [
            f for f in candidates
            if f.target == v.target and f.request.spec.compute == "float" and f.request.spec.family in ("fp32", "fp16")
        ]  # fmt: skip
        timed = [f for f in floats if f.latency and f.latency.get("p50_ms")]
        if not floats:
            uncompared[v.id] = (
                f"speed not compared with float: no float variant of {v.target} in this build "
                "(add fp32 to the platform's variants to check that int8 is faster)"
            )
        elif not timed or not v.latency:
            uncompared[v.id] = "speed not compared with float: no host latency for both"
        else:
            fastest = min(timed, key=lambda f: f.latency["p50_ms"])
            ours, theirs = v.latency["p50_ms"], fastest.latency["p50_ms"]
            if ours > theirs * (1 + SLOWER_TOLERANCE) and ours - theirs > SLOWER_MIN_MS:
                slow[v.id] = slower_line(v, fastest)
    return slow, uncompared


def _bundles(recipe, report_json: bytes, shipped, job_options, workdir: Path, final: Path, options: BuildOptions):  # noqa: ANN001, ANN202
    from mobex.bundle.assemble import assemble_bundle
    from mobex.bundle.keys import ensure_dev_key

    key, created = (options.key, False) if options.key else ensure_dev_key()
    bundles = []
    for platform, chosen in shipped.items():
        out_zip = final / f"{recipe.model.name}-{recipe.model.version}-{platform}.zip"
        assemble_bundle(
            recipe,
            chosen,
            job_options[chosen.target],
            report_json,
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


__all__ = ["BuildOptions", "BuildResult", "ShipDecision", "build", "choose_shipped", "ship_policies"]
