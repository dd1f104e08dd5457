"""Parity of a streaming model, step by step: each model ran every sequence feeding back its own state.

Outputs arrive as [sequences, steps, ...] per output. Recurrent error compounds: a variant that matches at
step 1 can drift by step 100, so parity is reported for every step (the worst over the outputs) and at the
last step per output; the headline numbers of the variant (mobex.metrics.parity) are over every step.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from mobex.metrics.parity import output_parity

STEP_KEYS = ("max_abs_error", "mean_abs_error", "cosine_min", "snr_db", "range_error_max")


def _worst(per_output: list[dict]) -> dict:
    out = {}
    for key in STEP_KEYS:
        values = [p[key] for p in per_output if p[key] is not None]
        low = key in ("cosine_min", "snr_db")  # higher is better: the worst is the smallest
        out[key] = (min(values) if low else max(values)) if values else None
    return out


def step_parity(names: list[str], reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict:
    """The report's `parity.streaming` block: per step (worst over outputs) and at the last step (per output)."""
    sequences, steps = reference[0].shape[:2]
    per_step = []
    for t in range(steps):
        parities = [
            asdict(output_parity(n, r[:, t], c[:, t])) for n, r, c in zip(names, reference, candidate, strict=True)
        ]
        per_step.append({"step": t, **_worst(parities)})
    last = [asdict(output_parity(n, r[:, -1], c[:, -1])) for n, r, c in zip(names, reference, candidate, strict=True)]
    return {
        "sequences": int(sequences),
        "steps": int(steps),
        "per_step": per_step,
        "last_step": {"outputs": [{"name": p["name"], **{k: p[k] for k in STEP_KEYS}} for p in last], **_worst(last)},
    }
