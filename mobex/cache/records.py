"""JSON forms of the stage values the build cache stores: exported variants, validation results, reference runs.

Each round-trips exactly what the report and the bundles read (floats keep their bits through JSON's
`repr`; tuples come back as tuples where the dataclass declares them), so a build from the cache writes
the same bundles as one that ran every stage.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from mobex.artifacts import ExportedVariant, QuantParams, TensorSpec
from mobex.targets.base import BuiltVariant
from mobex.validate.validator import ReferenceResult, VariantResult

OUTPUTS_FILE = "outputs.npz"


def tensor_to_json(t: TensorSpec) -> dict:
    q = t.quantization
    return {
        "name": t.name,
        "shape": list(t.shape),
        "dtype": t.dtype,
        "quantization": None if q is None else {"scale": q.scale, "zero_point": q.zero_point},
    }


def tensor_from_json(d: dict) -> TensorSpec:
    q = d["quantization"]
    quant = None if q is None else QuantParams(scale=q["scale"], zero_point=q["zero_point"])
    return TensorSpec(name=d["name"], shape=tuple(d["shape"]), dtype=d["dtype"], quantization=quant)


def variant_to_json(v: ExportedVariant) -> dict:
    """An exported variant without its platform (set per request) and path (where it is restored)."""
    return {
        "target": v.target,
        "quantization": v.quantization,
        "file": Path(v.path).name,
        "inputs": [tensor_to_json(t) for t in v.inputs],
        "outputs": [tensor_to_json(t) for t in v.outputs],
        "size_bytes": v.size_bytes,
        "seconds": v.seconds,
        "notes": list(v.notes),
        "details": v.details,
        "manifest_extras": v.manifest_extras,
    }


def variant_from_json(d: dict, path: Path, platform: str) -> ExportedVariant:
    return ExportedVariant(
        target=d["target"],
        platform=platform,
        quantization=d["quantization"],
        path=path,
        inputs=[tensor_from_json(t) for t in d["inputs"]],
        outputs=[tensor_from_json(t) for t in d["outputs"]],
        size_bytes=d["size_bytes"],
        seconds=d["seconds"],
        notes=list(d["notes"]),
        details=d["details"],
        manifest_extras=d["manifest_extras"],
    )


# What a validation adds to its exported variant (the rest comes from the variant itself).
_RESULT_FIELDS = ("status", "size_bytes", "backend", "parity", "latency", "gates", "passed", "notes")


def result_to_json(r: VariantResult) -> dict:
    out: dict[str, Any] = {k: getattr(r, k) for k in _RESULT_FIELDS}
    out["gates"] = list(r.gates)
    out["notes"] = list(r.notes)
    out["latency_by_threads"] = list(r.latency_by_threads)
    out["validate_seconds"] = r.validate_seconds
    out["reference_stats"] = r.reference_stats
    out["gates_not_applied"] = list(r.gates_not_applied)
    out["delegation"] = r.delegation
    out["io_contract"] = r.io_contract
    return out


def result_from_json(d: dict, built: BuiltVariant) -> VariantResult:
    """The stored validation of `built` (its request and artifact are this build's)."""
    variant = built.artifact
    return VariantResult(
        request=built.request,
        status=d["status"],
        size_bytes=d["size_bytes"],
        backend=d["backend"],
        parity=d["parity"],
        latency=d["latency"],
        latency_by_threads=tuple(d["latency_by_threads"]),
        gates=tuple(d["gates"]),
        passed=d["passed"],
        notes=tuple(d["notes"]),
        export_seconds=round(variant.seconds, 3),
        validate_seconds=d["validate_seconds"],
        artifact=variant,
        reference_stats=d["reference_stats"],
        quantization_details=variant.details,
        gates_not_applied=tuple(d["gates_not_applied"]),
        delegation=d["delegation"],
        io_contract=d["io_contract"],
    )


def reference_to_json(r: ReferenceResult) -> tuple[dict, bytes]:
    """(payload, outputs.npz bytes) of a reference run."""
    buffer = io.BytesIO()
    arrays = {f"output_{i}": np.asarray(o) for i, o in enumerate(r.outputs)}
    arrays |= {f"step_output_{i}": np.asarray(o) for i, o in enumerate(r.step_outputs or [])}
    np.savez(buffer, **arrays)
    payload = {
        "outputs": len(r.outputs),
        "step_outputs": None if r.step_outputs is None else len(r.step_outputs),
        "metrics": r.metrics,
        "latency": r.latency,
        "latency_by_threads": r.latency_by_threads,
        "input_stats": r.input_stats,
    }
    return payload, buffer.getvalue()


def reference_from_json(payload: dict, outputs_npz: bytes) -> ReferenceResult:
    with np.load(io.BytesIO(outputs_npz), allow_pickle=False) as npz:
        outputs = [npz[f"output_{i}"] for i in range(payload["outputs"])]
        steps = payload["step_outputs"]
        step_outputs = None if steps is None else [npz[f"step_output_{i}"] for i in range(steps)]
    return ReferenceResult(
        outputs=outputs,
        metrics=payload["metrics"],
        latency=payload["latency"],
        latency_by_threads=payload["latency_by_threads"],
        input_stats=payload["input_stats"],
        step_outputs=step_outputs,
    )
