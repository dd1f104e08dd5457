"""The build cache as the pipeline sees it: the reference run, the export jobs and the validations, each
looked up by a content key before it runs and stored after.

What each key covers (mobex.cache.keys makes the hashes; every key also covers mobex's own source and the
toolchain versions of mobex.provenance):
- reference run: the model (the .pt/.pt2 file, or the factory's module and the recipe-folder modules it
  imports, the installed packages they import, the weights), the validation data as read, the inputs,
  `[latency]`, the task, labels and preprocessing. Not cached when pruning (the pruned model is made anew).
- export of one variant: the model (or the pruned model's .pt2 bytes), the target's frozen options
  (`Target.options(recipe)`), the variant name, the inputs, the output names, the file stem, the example
  batch and the calibration data as read, and the content of every other data file the recipe names
  (training data, fine-tuning data) with the `[data]` options they are read with.
- validation of one variant: the exported model's bytes, the request (platform, target, variant), the
  validation plan, the target's options, the validation data as read and the reference model.
A cached validation reuses the latency measured when it was stored (the report's `cache.latency` says
"reused"): re-measuring would cost seconds per variant and give another sample of the same noise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mobex import plugins
from mobex.bounded import loads_json
from mobex.cache import records
from mobex.cache.keys import (
    KEY_SCHEMA,
    Unhashable,
    arrays_sha256,
    digest,
    mobex_source_sha256,
    model_source_material,
    tree_sha256,
)
from mobex.cache.store import CacheStore, auto_prune_limit
from mobex.executor import Executor, LocalExecutor, ValidationTask
from mobex.plugins import VariantRequest
from mobex.targets.base import BuiltVariant, ExportJob, TargetExport
from mobex.validate.validator import ReferenceResult, ValidationPlan, VariantResult

log = logging.getLogger("mobex.cache")
CORRUPT_NOTE = "the cached entry failed its hash check: it was removed and rebuilt"


@dataclass
class BuildCache:
    """One build's view of the cache (`store` None: off, every stage runs, the report says "off")."""

    recipe: Any  # mobex.recipe.Recipe
    store: CacheStore | None
    executor: Executor = field(default_factory=LocalExecutor)
    off_reason: str | None = None
    _common: dict = field(default_factory=dict)
    _model: dict | None = None
    _data: dict = field(default_factory=dict)
    _exports: dict[tuple[str, str], dict] = field(default_factory=dict)  # (target, variant) -> cache status
    _reference_id: str | None = None

    @classmethod
    def open(
        cls, recipe: Any, validation: Any, calibration: Any, *, enabled: bool = True, executor: Executor | None = None
    ) -> BuildCache:
        """Hash what every key shares (code, weights, data) once; a cache that cannot be keyed is off."""
        executor = executor or LocalExecutor()
        if not enabled:
            return cls(recipe, None, executor, off_reason="--no-cache")
        try:
            store = CacheStore()
            store.base.mkdir(parents=True, exist_ok=True)  # an unwritable cache folder turns the cache off
            cache = cls(recipe, store, executor)
            cache._common = {"schema": KEY_SCHEMA, "mobex": mobex_source_sha256(), "toolchain": _toolchain()}
            if recipe.prune is None:
                weights = recipe.resolve(recipe.model.weights) if recipe.model.weights is not None else None
                cache._model = model_source_material(recipe.base_dir, recipe.model.source, weights, store.file_sha256)
            cache._data = {
                "example": arrays_sha256(validation.feed(0)),
                "calibration": arrays_sha256(calibration.arrays, calibration.labels),
                "validation": arrays_sha256(validation.arrays, validation.labels),
                "files": _other_data_files(recipe, store),
            }
        except (OSError, Unhashable) as exc:
            log.warning("build cache off for this build: %s: %s", type(exc).__name__, exc)
            return cls(recipe, None, executor, off_reason=f"cache off: {type(exc).__name__}: {exc}")
        return cache

    def _off(self) -> dict:
        """A variant's status when the cache is off (with why, unless it was asked for with --no-cache)."""
        note = {"note": self.off_reason} if self.off_reason and self.off_reason != "--no-cache" else {}
        return {"export": "off", **note}

    def _key(self, kind: str, material: dict) -> str:
        return digest({"kind": kind, **self._common, **material}, self.recipe.base_dir)

    # -- reference run -------------------------------------------------------------------------

    def _reference_key(self) -> str | None:
        if self.store is None or self._model is None:
            return None
        r = self.recipe
        return self._key(
            "reference",
            {
                "model": self._model,
                "validation": self._data["validation"],
                "inputs": [i.model_dump(mode="json") for i in r.inputs],
                "latency": r.latency,
                "task": r.model.task,
                "labels": r.labels(),
                "preprocessing": r.preprocessing.record(),
            },
        )

    def has_reference(self) -> bool:
        """True when the reference run will come from the cache (then the model need not be loaded)."""
        key = self._reference_key()
        return key is not None and self._has("reference", key)

    def reference(self, compute: Callable[[], ReferenceResult]) -> ReferenceResult:
        """The reference run from the cache, or `compute()` (stored for the next build)."""
        key = self._reference_key()
        self._reference_id = key  # with pruning: the pruned model's hash, once it is saved (run_exports)
        if key is None:
            return replace(compute(), cache="off")
        found = self.store.get("reference", key)
        if found is not None:
            payload, files = found
            return replace(records.reference_from_json(payload, files[records.OUTPUTS_FILE]), cache="hit")
        result = compute()
        try:
            payload, outputs = records.reference_to_json(result)
            self.store.put("reference", key, payload, {records.OUTPUTS_FILE: outputs})
        except (OSError, TypeError, ValueError) as exc:
            _not_stored(exc)
        return replace(result, cache="miss")

    # -- exports -------------------------------------------------------------------------------

    def _export_key(self, job: ExportJob, name: str) -> str:
        model = self._model if job.pruned_path is None else {"pruned": tree_sha256(Path(job.pruned_path))}
        return self._key(
            "export",
            {
                "model": model,
                "target": job.target,
                "variant": name,
                "options": job.options,
                "inputs": [i.model_dump(mode="json") for i in self.recipe.inputs],
                "outputs": list(job.output_names),
                "stem": job.stem,
                "threads": job.threads,
                "data": {k: self._data[k] for k in ("example", "calibration", "files")},
            },
        )

    def cached_targets(self) -> set[str]:
        """Targets whose every requested variant has a cache entry (their up-front data checks can be skipped:
        an entry exists only for data that passed them). Known only when the reference run is cached too (its
        output count gives the output names)."""
        count = self._cached_output_count()
        if count is None:
            return set()
        names = tuple(self.recipe.output_names(count))
        out = set()
        for target in {r.target for r in self.recipe.requests()}:
            options = plugins.target(target).options(self.recipe)
            job = ExportJob(target, (), "", "", self.recipe.model.name, names, options)
            names_of = {r.name for r in self.recipe.requests() if r.target == target}
            try:
                if all(self._has("export", self._export_key(job, n)) for n in names_of):
                    out.add(target)
            except Unhashable:
                continue
        return out

    def _has(self, kind: str, key: str) -> bool:
        return (self.store.entry_path(kind, key) / "meta.json").is_file()

    def _cached_output_count(self) -> int | None:
        """How many outputs the cached reference run has (None: no such entry, or an unreadable one)."""
        key = self._reference_key()
        if key is None or not self._has("reference", key):
            return None
        try:
            meta = loads_json((self.store.entry_path("reference", key) / "meta.json").read_bytes(), "a cache entry")
            return int(meta["payload"]["outputs"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def run_exports(self, jobs: list[ExportJob], parallel: int) -> list[TargetExport]:
        """Every job's result: variants with an intact entry restored from the cache, the rest built (by the
        executor: no worker process starts when everything is cached) and stored."""
        if self.store is None:
            self._exports = {(j.target, r.name): self._off() for j in jobs for r in j.requests}
            return self.executor.run_exports(jobs, parallel)
        pruned = next((j.pruned_path for j in jobs if j.pruned_path), None)
        if pruned is not None:
            self._reference_id = "pruned:" + tree_sha256(Path(pruned))
        restored: dict[tuple[str, str], Any] = {}
        keys: dict[tuple[str, str], str | None] = {}
        todo: list[ExportJob] = []
        seconds: dict[str, float] = {}
        for job in jobs:
            start = time.perf_counter()
            misses = []
            for request in job.requests:
                k = (job.target, request.name)
                if k not in keys:
                    keys[k], restored[k] = self._lookup_export(job, request)
                if restored[k] is None:
                    misses.append(request)
            seconds[job.target] = time.perf_counter() - start
            if misses:
                todo.append(replace(job, requests=tuple(misses)))
        ran = {e.target: e for e in self.executor.run_exports(todo, parallel)} if todo else {}
        stored: set[tuple[str, str]] = set()
        for export in ran.values():
            for built in export.variants:
                k = (export.target, built.request.name)
                if k not in stored and keys[k] is not None:  # a variant two platforms share is stored once
                    stored.add(k)
                    self._exports[k].update(self._store_export(keys[k], built.artifact))
        self._prune_if_large()
        return [_merged(job, restored, ran.get(job.target), seconds[job.target]) for job in jobs]

    def _lookup_export(self, job: ExportJob, request: VariantRequest) -> tuple[str | None, Any]:
        """(key, restored variant or None); no key when the target's options have no canonical form."""
        try:
            key = self._export_key(job, request.name)
        except Unhashable as exc:
            self._exports[(job.target, request.name)] = {"export": "off", "note": f"not cached: {exc}"}
            return None, None
        return key, self._restore_export(key, job, request)

    def _restore_export(self, key: str, job: ExportJob, request: VariantRequest) -> Any:
        dest = Path(job.workdir) / "cached" / job.target / request.name
        before = len(self.store.corrupted)
        found = self.store.get("export", key, restore_to=dest)
        status: dict[str, Any] = {"export": "hit" if found else "miss"}
        if len(self.store.corrupted) > before:
            status["note"] = CORRUPT_NOTE
        self._exports[(job.target, request.name)] = status
        if found is None:
            return None
        payload, _ = found
        return records.variant_from_json(payload, dest / "model" / payload["file"], request.platform)

    def _store_export(self, key: str, variant: Any) -> dict:
        payload = records.variant_to_json(variant)
        try:
            self.store.put("export", key, payload, {f"model/{payload['file']}": Path(variant.path)})
        except (OSError, TypeError, ValueError) as exc:
            return _not_stored(exc)
        return {}

    def _prune_if_large(self) -> None:
        limit = auto_prune_limit()
        if limit is not None:
            self.store.prune(limit)

    # -- validations ---------------------------------------------------------------------------

    def _validation_key(self, task: ValidationTask, plan: ValidationPlan) -> str | None:
        r = task.built.request
        if self._reference_id is None:
            return None
        return self._key(
            "validation",
            {
                "model_file": tree_sha256(Path(task.built.artifact.path)),
                "request": [r.platform, r.target, r.name, r.spelled],
                "plan": plan,
                "options": task.options,
                "validation": self._data["validation"],
                "reference": self._reference_id,
            },
        )

    def validate_all(
        self, tasks: list[ValidationTask], plan: ValidationPlan, data: Any, reference: ReferenceResult
    ) -> list[VariantResult]:
        """Each task's result, in order: from the cache when its inputs are identical, else validated (by the
        executor) and stored. Each carries its `cache` status for the report."""
        results: list[VariantResult | None] = [None] * len(tasks)
        todo: list[tuple[int, str | None]] = []
        for i, task in enumerate(tasks):
            status = dict(self._exports.get((task.built.request.target, task.built.request.name), {"export": "off"}))
            try:
                key = self._validation_key(task, plan) if self.store is not None else None
            except Unhashable:
                key = None
            found = self.store.get("validation", key) if key is not None else None
            if found is not None:
                result = records.result_from_json(found[0], task.built)
                latency = "reused" if result.latency else None
                results[i] = replace(result, cache={**status, "validation": "hit", "latency": latency})
            else:
                todo.append((i, key))
        fresh = self.executor.validate([tasks[i] for i, _ in todo], plan, data, reference) if todo else []
        for (i, key), result in zip(todo, fresh, strict=True):
            status = dict(self._exports.get((result.request.target, result.request.name), {"export": "off"}))
            if key is not None:
                status.update(self._store_validation(key, result))
            validation = "miss" if key is not None else "off"
            results[i] = replace(result, cache={**status, "validation": validation, "latency": _measured(result)})
        return [r for r in results if r is not None]

    def _store_validation(self, key: str, result: VariantResult) -> dict:
        try:
            self.store.put("validation", key, records.result_to_json(result))
        except (OSError, TypeError, ValueError) as exc:
            return _not_stored(exc)
        return {}


def _not_stored(exc: Exception) -> dict:
    """A cache entry that cannot be written is no build error (the next build redoes the work): warn, report."""
    log.warning("build cache: entry not stored: %s: %s", type(exc).__name__, exc)
    return {"note": f"not stored in the cache: {type(exc).__name__}: {exc}"}


def _measured(result: VariantResult) -> str | None:
    return "measured" if result.latency else None


def _merged(job: ExportJob, restored: dict, ran: TargetExport | None, restore_seconds: float) -> TargetExport:
    """One job's result in request order: restored variants and the ones built now."""
    built = {b.request: b for b in (ran.variants if ran else ())}
    variants = []
    for request in job.requests:
        hit = restored.get((job.target, request.name))
        if hit is not None:
            variants.append(BuiltVariant(request, replace(hit, platform=request.platform)))
        elif request in built:
            variants.append(built[request])
    failures = ran.failures if ran else ()
    seconds = restore_seconds + (ran.seconds if ran else 0.0)
    return TargetExport(job.target, tuple(variants), failures, seconds, ran.log_tail if ran else "")


def _other_data_files(recipe: Any, store: CacheStore) -> dict:
    """Content hashes of the data files the recipe names besides validation and calibration (read lazily by
    export workers: int8 training data, fine-tuning data), and the `[data]` options they are read with."""
    paths = {"training": recipe.data.training}
    if recipe.quantization.finetune is not None:
        paths["quantization.finetune"] = recipe.quantization.finetune.data
    if recipe.prune is not None and recipe.prune.finetune is not None:
        paths["prune.finetune"] = recipe.prune.finetune.data
    hashes = {}
    for role, rel in paths.items():
        if rel is not None:
            path = recipe.resolve(rel)
            hashes[role] = tree_sha256(path, store.file_sha256) if path.exists() else "missing"
    return {"files": hashes, "read": recipe.data, "preprocessing": recipe.preprocessing.record()}


def _toolchain() -> dict:
    from mobex.provenance import toolchain_versions

    return toolchain_versions()
