"""Why a variant runs as fast as it does, in one line: delegate partitions, reference-kernel ops, float ops.

An int8 model is only faster when its ops run in XNNPACK's int8 kernels. Ops XNNPACK has no kernel for in
int8 run on LiteRT's reference kernels, each one splitting the graph into another partition with a copy at
both ends; ops kept in float (fallback, islands between float ops) add QUANTIZE/DEQUANTIZE pairs. The ship
decision (mobex.pipeline.choose_shipped) quotes these lines when an int8 variant is slower than float.
"""

from __future__ import annotations

from typing import Any


def delegation_line(delegation: dict | None) -> str:
    """`3 XNNPACK partitions; 2 ops on LiteRT reference kernels (HARD_SWISH x2)`, from the report's `delegation`."""
    if not delegation:
        return "delegation unknown (this runtime does not list its delegated ops)"
    parts = delegation.get("partitions", 0)
    line = f"{parts} XNNPACK partition{'s' if parts != 1 else ''}"
    slow = {op: counts["reference"] for op, counts in (delegation.get("by_op") or {}).items() if counts["reference"]}
    if not slow:
        return line + "; every op in XNNPACK"
    kinds = ", ".join(f"{op} x{n}" for op, n in sorted(slow.items(), key=lambda kv: (-kv[1], kv[0])))
    total = sum(slow.values())
    kernels = delegation.get("reference_kernels", "LiteRT reference kernels")
    return f"{line}; {total} op{'s' if total != 1 else ''} on {kernels} ({kinds})"


def float_ops_line(details: dict | None) -> str:
    """`4 ops kept in float (2 of them islands between float ops, 1 recurrent)`, from `quantization_details`."""
    layers = (details or {}).get("fallback_layers") or []
    if not layers:
        return "no op kept in float"
    reasons: dict[str, int] = {}
    for layer in layers:
        reasons[layer.get("reason", "sensitive")] = reasons.get(layer.get("reason", "sensitive"), 0) + 1
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
    return f"{len(layers)} op{'s' if len(layers) != 1 else ''} kept in float ({why})"


def slower_line(variant: Any, fastest_float: Any) -> str:
    """The one line the report gives for an int8 variant that is slower than the float one (VariantResults)."""
    ours, theirs = variant.latency, fastest_float.latency
    ratio = ours["p50_ms"] / theirs["p50_ms"] if theirs["p50_ms"] else float("inf")
    return (
        f"{variant.id}: not shipped: slower than {fastest_float.id} in this build (p50 {ours['p50_ms']:.4g} ms "
        f"against {theirs['p50_ms']:.4g} ms, {ratio:.2f}x, {ours.get('threads', '?')} thread(s)): "
        f"{delegation_line(variant.delegation)}; {float_ops_line(variant.quantization_details)} "
        f"({fastest_float.id}: {delegation_line(fastest_float.delegation)})"
    )
