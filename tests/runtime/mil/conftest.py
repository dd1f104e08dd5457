"""Helpers for the MIL reference interpreter tests, as a `mil` fixture: convert small torch modules
(or MIL programs built with coremltools' Builder) to saved .mlpackage files with coremltools itself,
run them through MilReferenceRunner, and compare with torch."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import coremltools as ct
import numpy as np
import pytest
import torch

logging.getLogger("coremltools").setLevel(logging.ERROR)

FP32_TOL = 1e-4
# fp16 programs: max abs error relative to the output's scale, and cosine similarity.
FP16_REL_TOL = 1e-2
FP16_COS_MIN = 0.999


def parity(actual: np.ndarray, expected: np.ndarray) -> dict[str, float]:
    """max abs error, that error relative to the expected output's scale, and cosine similarity."""
    a = np.asarray(actual, dtype=np.float64).reshape(-1)
    e = np.asarray(expected, dtype=np.float64).reshape(-1)
    err = float(np.max(np.abs(a - e))) if a.size else 0.0
    scale = float(np.max(np.abs(e))) if e.size else 0.0
    denom = float(np.linalg.norm(a) * np.linalg.norm(e))
    cos = float(a @ e / denom) if denom > 0 else float(np.allclose(a, e))
    return {"max_abs": err, "rel_to_scale": err / max(scale, 1e-12), "cosine": cos}


class MilHelpers:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self._n = 0

    def path(self, stem: str = "m") -> Path:
        self._n += 1
        return self.tmp_path / f"{stem}{self._n}.mlpackage"

    def convert_torch(
        self,
        module,
        example: Sequence,
        *,
        fp16: bool = False,
        names: Sequence[str] | None = None,
        dtypes: Sequence | None = None,
        target=None,
        io_fp32: bool = True,
    ) -> Path:
        """Trace `module` on `example`, convert with coremltools, save; return the package path.

        io_fp32 declares fp32 inputs for fp16 programs (a cast at the edge, like a typical export);
        otherwise an iOS16 fp16 program takes fp16 inputs.
        """
        warnings.filterwarnings("ignore")
        module = module.eval()
        with torch.no_grad():
            traced = torch.jit.trace(module, tuple(example), strict=False)
        names = list(names or [f"x{i}" for i in range(len(example))])
        inputs = []
        for i, (name, t) in enumerate(zip(names, example, strict=True)):
            if dtypes is not None:
                dtype = dtypes[i]
            else:
                dtype = np.float16 if fp16 and not io_fp32 else np.float32
            inputs.append(ct.TensorType(name=name, shape=tuple(t.shape), dtype=dtype))
        model = ct.convert(
            traced,
            inputs=inputs,
            convert_to="mlprogram",
            minimum_deployment_target=target or ct.target.iOS16,
            compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
        )
        path = self.path()
        model.save(str(path))
        return path

    def convert_program(self, prog, *, target=None, fp16: bool = False) -> Path:
        """Convert a coremltools Builder program (`@mb.program`) to a saved .mlpackage."""
        warnings.filterwarnings("ignore")
        model = ct.convert(
            prog,
            convert_to="mlprogram",
            minimum_deployment_target=target or ct.target.iOS16,
            compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
        )
        path = self.path()
        model.save(str(path))
        return path

    @staticmethod
    def torch_outputs(module, example: Sequence) -> list[np.ndarray]:
        with torch.no_grad():
            out = module.eval()(*example)
        if isinstance(out, torch.Tensor):
            out = (out,)
        return [o.detach().float().numpy() if o.is_floating_point() else o.numpy() for o in out]

    @staticmethod
    def feed_of(runner, example: Sequence) -> dict[str, np.ndarray]:
        return {spec.name: t.numpy() for spec, t in zip(runner.inputs, example, strict=True)}

    parity = staticmethod(parity)

    def check_torch(self, module, example, *, fp16: bool = False, tol: float | None = None, **kw):
        """Convert, run through the interpreter, compare every output with torch; return the runner."""
        from mobex.runtime.mil import MilReferenceRunner

        path = self.convert_torch(module, example, fp16=fp16, **kw)
        runner = MilReferenceRunner(path)
        assert runner.unsupported_ops() == []
        got = runner.run(self.feed_of(runner, example))
        want = self.torch_outputs(module, example)
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g.shape == w.shape, f"output {i}: {g.shape} vs {w.shape}"
            if fp16:
                p = parity(g, w)
                assert p["rel_to_scale"] <= (tol or FP16_REL_TOL) and p["cosine"] >= FP16_COS_MIN, (i, p)
            else:
                np.testing.assert_allclose(
                    g.astype(np.float64), w, atol=tol or FP32_TOL, rtol=1e-4, err_msg=f"output {i}"
                )
        return runner


@pytest.fixture
def mil(tmp_path) -> MilHelpers:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return MilHelpers(tmp_path)


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: takes several seconds (deselect with -m 'not slow')")
