"""Where a build's export jobs and validations run: here (the default), or elsewhere (mobex.fleet's Ray executor).

The pipeline hands its export jobs and the variants to validate to an `Executor`; the build cache
(mobex.cache) sits in front of it and passes on only what it has no entry for. `LocalExecutor` is what
`mobex build` always did: export jobs in spawn worker processes (mobex.export.run_exports), validations in
this process, one after another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from mobex.export import run_exports
from mobex.targets.base import BuiltVariant, ExportJob, TargetExport
from mobex.validate.validator import ValidationPlan, VariantResult, validate_variant


@dataclass(frozen=True)
class ValidationTask:
    """One exported variant to validate, with its target's options (picklable, like ExportJob)."""

    built: BuiltVariant
    options: Any


class Executor(Protocol):
    def run_exports(self, jobs: list[ExportJob], parallel: int) -> list[TargetExport]:
        """Every job's result, in job order (a job whose process died reports its variants as failed)."""

    def validate(
        self, tasks: list[ValidationTask], plan: ValidationPlan, data: Any, reference: Any
    ) -> list[VariantResult]:
        """Every task's result, in task order."""


class LocalExecutor:
    """Export jobs in local worker processes, validations in this process."""

    def run_exports(self, jobs: list[ExportJob], parallel: int) -> list[TargetExport]:
        return run_exports(jobs, parallel)

    def validate(
        self, tasks: list[ValidationTask], plan: ValidationPlan, data: Any, reference: Any
    ) -> list[VariantResult]:
        return [validate_variant(t.built, plan, t.options, data, reference) for t in tasks]
