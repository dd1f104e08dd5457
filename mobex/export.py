"""Export stage: one job per target the recipe asks for; each converts once and builds its variants.

`plan_exports` turns the recipe into `ExportJob`s (mobex.targets.base), one per target, with the target's
options read from the recipe here in the parent. `run_exports` runs them in worker processes (or inline
with `parallel=1`): they run in parallel on two cores, and a converter crash (a segfault in a native
library) takes down only its own job. In a worker, `run_export` loads the model and the data, opens the
target's session and calls each requested variant's registered builder.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from mobex import plugins
from mobex.plugins import VariantRequest
from mobex.targets.base import BuiltVariant, ExportFailure, ExportJob, JobInputs, TargetExport
from mobex.workers import pool_options  # workers die with the build


def plan_exports(
    recipe,  # noqa: ANN001 - Recipe
    workdir: Path,
    names: list[str],
    pruned_path: str | None = None,
    model_fingerprint: tuple[tuple[str, tuple], ...] | None = None,
) -> list[ExportJob]:
    """One job per target, in the order the recipe first asks for each (Android's variants come first)."""
    by_target: dict[str, list[VariantRequest]] = {}
    for request in recipe.requests():
        by_target.setdefault(request.target, []).append(request)
    return [
        ExportJob(
            target=name,
            requests=tuple(requests),
            recipe_path=str(recipe.path),
            workdir=str(workdir),
            stem=recipe.model.name,
            output_names=tuple(names),
            options=plugins.target(name).options(recipe),
            pruned_path=pruned_path,
            model_fingerprint=model_fingerprint,
        )
        for name, requests in by_target.items()
    ]


def run_export(job: ExportJob) -> TargetExport:
    """Convert the model for one target and build every variant the job requests (a worker's whole task)."""
    import torch

    start = time.perf_counter()
    torch.set_num_threads(job.threads)
    try:
        inputs = _load_inputs(job)
    except ModelMismatch as exc:
        failures = tuple(ExportFailure(r, str(exc)) for r in job.requests)
        return TargetExport(job.target, failures=failures, seconds=time.perf_counter() - start)
    target = plugins.target(job.target)
    out_dir = Path(job.workdir) / job.target
    out_dir.mkdir(parents=True, exist_ok=True)
    session = target.session(job, inputs, out_dir)
    built: dict[str, BuiltVariant | str] = {}
    variants: list[BuiltVariant] = []
    failures: list[ExportFailure] = []
    for request in job.requests:
        if request.name not in built:  # a variant two platforms share (e.g. ExecuTorch) is built once
            out = out_dir / f"{job.stem}-{request.name}.{target.info.file_format}"
            try:
                built[request.name] = BuiltVariant(request, request.spec.build(session, out))
            except Exception as exc:
                built[request.name] = _failure_message(exc)
        made = built[request.name]
        if isinstance(made, str):
            failures.append(ExportFailure(request, made))
        else:
            extras = made.artifact.manifest_extras
            if extras is None:  # read here, where the converter is loaded (bundling a cached variant needs none)
                extras = target.manifest_extras(made.artifact.path)
            artifact = replace(made.artifact, platform=request.platform, manifest_extras=extras)
            variants.append(BuiltVariant(request, artifact))
    return TargetExport(job.target, tuple(variants), tuple(failures), time.perf_counter() - start)


class ModelMismatch(Exception):
    """The model an export worker loaded is not the one the reference run used."""


def _load_inputs(job: ExportJob) -> JobInputs:
    """The model (the recipe's, or the pipeline's pruned one), one example batch and the calibration data."""
    from mobex.data import example_inputs, load_validation_and_calibration
    from mobex.recipe import load_recipe
    from mobex.sources import fingerprint_mismatch, load_model

    recipe = load_recipe(job.recipe_path)
    validation, calibration = load_validation_and_calibration(recipe)
    if job.pruned_path is not None:
        from mobex.prune.pruning import load_pruned_model

        model = load_pruned_model(job.pruned_path)
    else:
        model = load_model(recipe)
        why = fingerprint_mismatch(job.model_fingerprint, model) if job.model_fingerprint is not None else None
        if why is not None:
            raise ModelMismatch(
                f"the model this {job.target} export loaded is not the one the reference run used: {why}. The "
                f"model source ({recipe.model.source}) builds different weights each time it is loaded, so "
                "parity would compare different models. Fix: load the weights from a file (`weights =` in "
                "[model]), or make the factory deterministic (no time, os.urandom or unseeded generators)"
            )
    if recipe.state:  # streaming: calibrate on the states the float model feeds itself, step by step
        from mobex.runtime.streaming import with_recorded_states

        calibration = with_recorded_states(model, recipe, calibration)
    return JobInputs(model=model, example=example_inputs(recipe, validation), calibration=calibration, recipe=recipe)


def run_export_in_child(job: ExportJob, log_path: str) -> TargetExport:
    """`run_export` for a worker process: the converters' chatter (progress bars, version warnings, C++
    logs) goes to a log file instead of the user's terminal; failures quote its tail."""
    from mobex.logs import quiet_third_party_logs

    quiet_third_party_logs()
    with open(log_path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    result = run_export(job)
    if result.failures:
        text = Path(log_path).read_text(errors="replace").strip().splitlines()
        result = replace(result, log_tail="\n".join(text[-20:]))
    return result


def run_exports(jobs: list[ExportJob], parallel: int) -> list[TargetExport]:
    """Every job's result, in job order: inline with `parallel <= 1` (or one job), else one worker per job."""
    if parallel <= 1 or len(jobs) == 1:
        return [run_export(job) for job in jobs]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(parallel, len(jobs)), mp_context=ctx, **pool_options()) as pool:
        futures = [
            (job, pool.submit(run_export_in_child, job, str(Path(job.workdir) / f"{job.target}.log"))) for job in jobs
        ]
        results = []
        for job, future in futures:
            try:
                results.append(future.result())
            except Exception as exc:  # the whole process died (e.g. a converter segfault)
                message = f"{job.target} export process failed: {exc}"
                failures = tuple(ExportFailure(r, message) for r in job.requests)
                results.append(TargetExport(job.target, failures=failures))
        return results


def _failure_message(exc: BaseException) -> str:
    detail = str(exc) or type(exc).__name__
    if not hasattr(exc, "exit_code"):  # not a MobexError: keep the tail of the traceback for debugging
        tail = "".join(traceback.format_exception(exc)[-3:]).strip()
        detail = f"{type(exc).__name__}: {detail}\n{tail}"
    return detail
