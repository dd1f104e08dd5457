"""Calibration feeds checked against an exported model's inputs, shared by the TFLite and Core ML quantizers.

`mobex build` checks the recipe's data before any conversion; these checks are for direct callers of
`quantize_tflite` / `compress_coreml`, so a bad feed is a clear `DataError`, not a converter traceback.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mobex.artifacts import TensorSpec
from mobex.errors import DataError


def checked_feeds(
    inputs: list[TensorSpec],
    calibration: list[dict[str, np.ndarray]] | None,
    *,
    variant: str,
    drop_hint: str,
    dtype_of: Callable[[TensorSpec], str] = lambda spec: spec.dtype,
    role: str = "calibration",
) -> list[dict[str, np.ndarray]]:
    """The feeds, each named after `inputs`, of their shapes and finite, cast to `dtype_of(spec)`.
    `role` names the data in messages ("calibration", or "training" for int8 fine-tuning)."""
    if not calibration:
        raise DataError(
            f"the {variant} variant needs {role} data, and none was given",
            hint=f"set [data] {role} in the recipe (an .npz with one array per input), or {drop_hint}",
        )
    specs = {s.name: s for s in inputs}
    feeds = []
    for i, feed in enumerate(calibration):
        if set(feed) != set(specs):
            raise DataError(
                f"{role} sample {i} has arrays {sorted(feed)}, the model takes {sorted(specs)}",
                hint=f"name the {role} arrays after the recipe's [[inputs]]",
            )
        cast = {}
        for name, spec in specs.items():
            x = np.asarray(feed[name])
            if tuple(x.shape) != tuple(spec.shape):
                raise DataError(
                    f"{role} sample {i}: array {name!r} has shape {list(x.shape)}, the model takes {list(spec.shape)}",
                    hint="store one sample per feed, batch dimension included",
                )
            if x.dtype.kind == "f" and not np.isfinite(x).all():
                raise DataError(f"{role} sample {i}: array {name!r} contains NaN or inf")
            cast[name] = np.ascontiguousarray(x, dtype=dtype_of(spec))
        feeds.append(cast)
    return feeds
