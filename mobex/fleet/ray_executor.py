"""`--executor ray`: a build's export jobs and validations as Ray tasks on an existing Ray cluster.

The driver (the `mobex build` process, or each fleet worker) connects with `ray.init(address=...)`:
`--ray-address ADDR`, else `$RAY_ADDRESS`, else `auto` (a cluster started on this machine with `ray start`).
Each export job (mobex.targets.base.ExportJob, picklable) runs `mobex.export.run_export` in a Ray task,
in a temporary folder of the node it lands on; the model files it made come back to the driver as bytes
and are written into the build's own folder, so only the driver writes to `--out`. Each validation runs
`validate_variant` in a Ray task that receives the model's bytes, and the validation data and reference
outputs through the object store (put once per build). What a task reads from disk (the recipe, its
model code, weights and data files) must be at the same path on every node: one machine, or a shared
filesystem. Every node needs the same mobex and toolchain (the tasks get the driver's PYTHONPATH).

Inside each export task, the int8 fallback search's independent candidates (its sensitivity pass: one
candidate per op with only that op in int8) run as Ray tasks of their own (`RayCandidatePool`, installed
with mobex.quantize.candidates.using_pool): the quantizer (float model, calibration, reference outputs)
goes to the object store once and every candidate task measures one op. The search's growth and
bisection steps depend on each other's results and stay in the export task. report.json says where the
candidates ran (quantization_details.sensitivity_ran_on).

Results are the same as a local build's (byte-identical bundles): the same code measures the same
candidates on the same data.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from mobex.errors import UsageError
from mobex.executor import ValidationTask
from mobex.quantize.candidates import using_pool
from mobex.targets.base import BuiltVariant, ExportFailure, ExportJob, TargetExport
from mobex.validate.validator import ValidationPlan, VariantResult

RAY_EXTRA_HINT = "install the optional 'ray' extra: pip install --no-deps -r requirements.lock (see README)"


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs the ray package, which is not installed", RAY_EXTRA_HINT) from None
    return ray


def runtime_env() -> dict:
    """What every task's worker process needs: this mobex on its import path, the converters' logs quiet."""
    import mobex

    paths = [str(Path(mobex.__file__).resolve().parents[1])]
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in paths]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(paths), "TQDM_DISABLE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}}


class RayExecutor:
    """Export jobs and validations as Ray tasks (one CPU each); see the module doc."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or "auto"

    def _connect(self) -> Any:
        ray = _ray()
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, runtime_env=runtime_env(), log_to_driver=False, namespace="mobex")
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UsageError(
                    f"--executor ray: cannot connect to a Ray cluster at {self.address!r}: {exc}",
                    "start one (`ray start --head`) and pass its address with --ray-address HOST:PORT; a cluster "
                    "with token authentication (ray 2.60's default) also needs RAY_AUTH_MODE=token and its token "
                    "in this process's environment (Ray docs: ray-security/token-auth)",
                ) from None
        return ray

    def run_exports(self, jobs: list[ExportJob], parallel: int) -> list[TargetExport]:
        """Every job as a Ray task, all at once; results in job order (a task that died fails its variants)."""
        ray = self._connect()
        remote = ray.remote(num_cpus=1, max_retries=0)(export_task)
        futures = [remote.remote(job, _read(job.pruned_path)) for job in jobs]
        results = []
        for job, future in zip(jobs, futures, strict=True):
            try:
                export, remote_dir, files = ray.get(future)
            except Exception as exc:  # the task's process died (a converter segfault) or Ray lost it
                message = f"{job.target} export task failed on Ray: {type(exc).__name__}: {_first_line(exc)}"
                failures = tuple(ExportFailure(r, message) for r in job.requests)
                results.append(TargetExport(job.target, failures=failures))
                continue
            results.append(_unpacked(export, remote_dir, files, Path(job.workdir)))
        return results

    def validate(
        self, tasks: list[ValidationTask], plan: ValidationPlan, data: Any, reference: Any
    ) -> list[VariantResult]:
        """Every validation as a Ray task; the data and the reference outputs go to the object store once."""
        ray = self._connect()
        remote = ray.remote(num_cpus=1, max_retries=0)(validation_task)
        data_ref, reference_ref = ray.put(data), ray.put(reference)
        futures = [
            remote.remote(t, _files_of(Path(t.built.artifact.path)), plan, data_ref, reference_ref) for t in tasks
        ]
        out = []
        for task, future in zip(tasks, futures, strict=True):
            try:
                result = ray.get(future)
            except Exception as exc:
                result = _task_died(task, plan, exc)
            out.append(replace(result, artifact=task.built.artifact))
        return out


def export_task(job: ExportJob, pruned: bytes | None) -> tuple[TargetExport, str, dict[str, bytes]]:
    """In a Ray worker: run the job in a temporary folder; return its result, that folder and the model files."""
    from mobex.export import run_export
    from mobex.logs import quiet_third_party_logs

    quiet_third_party_logs()
    tmp = Path(tempfile.mkdtemp(prefix="mobex-ray-export-"))
    try:
        pruned_path = None
        if pruned is not None:
            pruned_path = str(tmp / "pruned.pt2")
            Path(pruned_path).write_bytes(pruned)
        with using_pool(RayCandidatePool()):
            export = run_export(replace(job, workdir=str(tmp), pruned_path=pruned_path))
        files: dict[str, bytes] = {}
        for built in export.variants:
            files.update(_files_of(Path(built.artifact.path), relative_to=tmp))
        return export, str(tmp), files
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class RayCandidatePool:
    """An int8 search's independent candidates as Ray tasks (one CPU each), submitted from an export task.

    A task blocked in `ray.get` gives its CPU back to the cluster, so the candidates can use the export
    task's CPU too. A quantizer that cannot be serialized (ExecuTorch's graph modules may not be) is measured
    in this task instead, and `name` says so."""

    def __init__(self) -> None:
        self.name = "ray"

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any]) -> list[Any]:
        ray = _ray()
        try:
            shared_ref = ray.put(shared)
        except Exception as exc:  # noqa: BLE001 - any serialization error: measure here instead
            self.name = f"the export task (the quantizer could not go to Ray: {type(exc).__name__}: {_first_line(exc)})"
            return [fn(shared, item) for item in items]
        remote = ray.remote(num_cpus=1, max_retries=0)(candidate_task)
        futures = [remote.remote(fn, shared_ref, item) for item in items]
        self.name = f"ray: {len(items)} tasks"
        return ray.get(futures)


def candidate_task(fn: Callable[[Any, Any], Any], shared: Any, item: Any) -> Any:
    """In a Ray worker: one independent int8 candidate, `fn(shared, item)`."""
    from mobex.logs import quiet_third_party_logs

    quiet_third_party_logs()
    return fn(shared, item)


def validation_task(
    task: ValidationTask, files: dict[str, bytes], plan: ValidationPlan, data: Any, reference: Any
) -> VariantResult:
    """In a Ray worker: write the model where this task can read it, and validate it."""
    from mobex.logs import quiet_third_party_logs
    from mobex.validate.validator import validate_variant

    quiet_third_party_logs()
    tmp = Path(tempfile.mkdtemp(prefix="mobex-ray-validate-"))
    try:
        _write_files(tmp, files)
        artifact = replace(task.built.artifact, path=tmp / Path(task.built.artifact.path).name)
        result = validate_variant(BuiltVariant(task.built.request, artifact), plan, task.options, data, reference)
        return replace(result, artifact=None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read(path: str | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def _files_of(path: Path, relative_to: Path | None = None) -> dict[str, bytes]:
    """A model file, or every file of a model folder, by path relative to `relative_to` (default: its folder)."""
    base = relative_to or path.parent
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {f.relative_to(base).as_posix(): f.read_bytes() for f in files}


def _write_files(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts:
            raise ValueError(f"refusing to write {rel!r} outside {root}")
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)


def _unpacked(export: TargetExport, remote_dir: str, files: dict[str, bytes], workdir: Path) -> TargetExport:
    """The job's result with its model files written into this build's folder (and its paths pointing there)."""
    _write_files(workdir, files)
    variants = []
    for built in export.variants:
        path = workdir / Path(built.artifact.path).relative_to(remote_dir)
        variants.append(BuiltVariant(built.request, replace(built.artifact, path=path)))
    return replace(export, variants=tuple(variants))


def _task_died(task: ValidationTask, plan: ValidationPlan, exc: Exception) -> VariantResult:
    """A validation whose Ray task died: reported as not run, its gates failed (as a local crash would)."""
    from mobex.validate import gates as gates_mod

    request, variant = task.built.request, task.built.artifact
    status = f"failed to run: the Ray task died: {type(exc).__name__}: {_first_line(exc)}"
    metrics = {"size_bytes": float(variant.size_bytes)}
    results = gates_mod.evaluate(request.spec, plan.task, metrics, plan.gates, status, unvalidated_may_pass=False)
    return VariantResult(
        request=request,
        status=status,
        size_bytes=variant.size_bytes,
        gates=tuple(g.to_dict() for g in results),
        passed=False,
        notes=tuple(variant.notes),
        export_seconds=round(variant.seconds, 3),
        artifact=variant,
        quantization_details=variant.details,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""
