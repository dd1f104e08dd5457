"""Core ML's own runtime (`MLModel.predict`) as a runner — macOS only.

NOT exercised in this project's CI, which runs on Linux where coremltools cannot predict; there the
validator uses the MIL reference interpreter (mobex.runtime.mil) and the report says
`backend: mil-reference`. Kept deliberately small so that what cannot be tested here is little.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobex.runtime.mil.image_io import NativeIO

_COMPUTE_UNITS = {"cpu_only": "CPU_ONLY", "cpu_and_gpu": "CPU_AND_GPU", "cpu_and_ne": "CPU_AND_NE", "all": "ALL"}
_ARRAY_DTYPES = {65568: np.float32, 65552: np.float16, 131104: np.int32, 65600: np.float64}


class CoreMLRuntimeRunner:
    """Runs a saved .mlpackage with Core ML on macOS, outputs in the spec's output order."""

    def __init__(self, path: Path, compute_units: str = "cpu_only") -> None:
        import coremltools as ct

        units = getattr(ct.ComputeUnit, _COMPUTE_UNITS[compute_units])
        self._model = ct.models.MLModel(str(path), compute_units=units)
        spec = self._model.get_spec()
        self._input_dtypes = {
            i.name: _ARRAY_DTYPES.get(i.type.multiArrayType.dataType, np.float32) for i in spec.description.input
        }
        self.output_names = [o.name for o in spec.description.output]
        self._native = NativeIO.read(spec)  # image inputs (PIL images) and classifier outputs: mil/image_io.py

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        inputs = {
            name: self._native.images[name].pil_image(feed[name])
            if name in self._native.images
            else np.asarray(feed[name]).astype(dtype)
            for name, dtype in self._input_dtypes.items()
        }
        result = self._model.predict(inputs)
        values = self._native.results(self.output_names, [result[name] for name in self.output_names])
        return [np.asarray(v, dtype=np.float32) for v in values]
