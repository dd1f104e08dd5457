"""Conformance of the MIL reference interpreter with coremltools' own MIL op tests (a pytest plugin).

coremltools ships its op tests in the wheel (`coremltools/converters/mil/mil/ops/tests/iOS14..iOS18`):
each builds a program with the MIL builder, converts it, and hands the model and the expected numpy
outputs to `testing_utils.compare_backend`, which only runs on macOS (Core ML `predict`). Loaded
with `-p mobex.runtime.mil.conformance`, this plugin makes those comparisons run here:

* `compare_backend` runs the saved .mlpackage through `MilReferenceRunner` and checks every output
  exactly as coremltools does (same tolerances, fp16 programs at fp16 tolerances, shape checks);
* `MLModel.predict` / `MLModel.make_state` (tests that call them directly, stateful programs) are
  served by the interpreter, with state carried across calls;
* every test case is classified: `pass` (every runtime comparison ran and matched), `wrong` (ran,
  mismatched or a kernel failed), `unsupported` (an op or feature the interpreter lacks, named),
  `n/a` (the test never reaches a runtime comparison; the reason is recorded).

The plugin is not imported by `mobex` itself: it patches coremltools globally and sets the
environment coremltools' test configuration reads, so it belongs in its own pytest process
(`scripts/mil_conformance.py`, `tests/runtime/mil/test_conformance.py`).
"""

from __future__ import annotations

import gc
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TESTS_PACKAGE = "coremltools.converters.mil.mil.ops.tests"
OPSET_DIRS = ("iOS14", "iOS15", "iOS16", "iOS17", "iOS18")
STATUSES = ("pass", "wrong", "disputed", "unsupported", "n/a")
# The Core ML version the interpreter stands in for, as the tests' macOS guards see it.
EMULATED_MACOS = (15, 5)


def tests_dir() -> Path:
    """Where the installed coremltools keeps its MIL op tests (found without importing coremltools)."""
    import importlib.util

    spec = importlib.util.find_spec("coremltools")
    path = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    if path is None or not (path / "converters/mil/mil/ops/tests").is_dir():
        raise RuntimeError(f"{TESTS_PACKAGE} is not installed (it ships in the coremltools wheel)")
    return path / "converters/mil/mil/ops/tests"


def set_test_environment() -> None:
    """coremltools' test configuration (`testing_reqs`) reads these at import: mlprogram backends
    only (the interpreter runs mlprogram models), fp32 next to fp16, CPU compute unit."""
    os.environ["PYMIL_TEST_TARGETS"] = "mlprogram"
    os.environ["INCLUDE_MIL_FP32_UNIT_TESTS"] = "1"
    os.environ.pop("COMPUTE_UNITS", None)
    os.environ.pop("RUN_BACKWARD_COMPATIBILITY", None)
    os.environ.setdefault("TQDM_DISABLE", "1")


# --------------------------------------------------------------------------- per-case record


@dataclass
class CaseRecord:
    """What happened in one test case."""

    nodeid: str
    opset_dir: str
    status: str = "n/a"
    detail: str = ""
    comparisons: int = 0  # runtime comparisons (compare_backend / predict) that ran
    matched: int = 0  # of those, compare_backend calls whose every check passed
    mismatch: str = ""  # first failed comparison
    unsupported: list[str] = field(default_factory=list)
    error: str = ""  # first interpreter error (kernel failure, bad feed)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class ConformanceMismatch(AssertionError):
    """The interpreter ran the program and its output differs from the test's expectation."""


class NotAnMlProgram(Exception):
    """The test asks for a prediction of a neuralnetwork model: out of the interpreter's scope."""


_current: CaseRecord | None = None


def _record() -> CaseRecord:
    global _current
    if _current is None:
        _current = CaseRecord(nodeid="<outside a test>", opset_dir="")
    return _current


# --------------------------------------------------------------------------- runtime stand-ins


def _runner_of(mlmodel):
    """The MilReferenceRunner of an MLModel (built once per model and cached on it)."""
    from mobex.runtime.mil import MilReferenceRunner

    runner = getattr(mlmodel, "_mobex_runner", None)
    if runner is None:
        kind = mlmodel._spec.WhichOneof("Type")  # the spec itself: get_spec() would deep-copy it
        if mlmodel.package_path is None or kind != "mlProgram":
            raise NotAnMlProgram(f"the test predicts with a {kind} model (the interpreter runs mlprogram models only)")
        runner = MilReferenceRunner(Path(mlmodel.package_path), function_name=mlmodel.function_name or "main")
        mlmodel._mobex_runner = runner
    return runner


class InterpreterState:
    """Stands in for coremltools' MLState: the runner's state, carried across `predict` calls."""

    def __init__(self, state) -> None:
        self.mobex_state = state


def _as_feed(runner, data: dict[str, Any]) -> dict[str, np.ndarray]:
    """Inputs as Core ML receives them: arrays; a 1-element array where the program takes a scalar."""
    feed = {}
    shapes = {spec.name: spec.shape for spec in runner.inputs}
    for name, value in data.items():
        arr = np.asarray(value)
        if name in shapes and len(shapes[name]) != arr.ndim and arr.size == int(np.prod(shapes[name] or (1,))):
            arr = arr.reshape([d if d > 0 else 1 for d in shapes[name]])
        feed[name] = arr
    return feed


def _note_unsupported(runner) -> None:
    """Record (and refuse) a program with ops the interpreter lacks, before anything runs."""
    from mobex.runtime.mil import UnsupportedOpError

    missing = runner.unsupported_ops()
    if missing:
        record = _record()
        record.unsupported.extend(op for op in missing if op not in record.unsupported)
        raise UnsupportedOpError(missing[0], ", ".join(missing[1:]))


def predict(mlmodel, data, state=None) -> dict[str, np.ndarray]:
    """`MLModel.predict` served by the MIL reference interpreter."""
    from mobex.runtime.mil import MilExecutionError, UnsupportedOpError

    record = _record()
    runner = _runner_of(mlmodel)  # NotAnMlProgram: not a comparison the interpreter can make
    record.comparisons += 1
    _note_unsupported(runner)
    try:
        feed = _as_feed(runner, data)
        if isinstance(state, InterpreterState):
            outputs = runner.run(feed, state=state.mobex_state)
        else:
            outputs = runner.run(feed)
    except UnsupportedOpError as exc:  # an op mode found only while running
        if exc.op_type not in record.unsupported:
            record.unsupported.append(exc.op_type)
        raise
    except MilExecutionError as exc:  # Core ML fails such a prediction with a RuntimeError
        record.error = record.error or f"{type(exc).__name__}: {exc}"[:600]
        raise RuntimeError(
            f"Unable to compute the prediction using ML Program (MIL reference interpreter: {exc})"
        ) from exc
    except Exception as exc:
        record.error = record.error or f"{type(exc).__name__}: {exc}"[:600]
        raise
    return {spec.name: value for spec, value in zip(runner.outputs, outputs, strict=True)}


def make_state(mlmodel) -> InterpreterState:
    """`MLModel.make_state` served by the interpreter: fresh (zero) state buffers."""
    runner = _runner_of(mlmodel)
    _note_unsupported(runner)
    return InterpreterState(runner.make_state())


def _compare_output(name: str, got, expected, atol: float, rtol: float, allow_mismatch_ratio: float) -> None:
    if isinstance(got, np.ndarray):
        try:
            np.testing.assert_allclose(got, expected, atol=atol, rtol=rtol)
        except AssertionError as exc:
            mismatched = np.sum(~np.isclose(got, expected, atol=atol, rtol=rtol))
            if mismatched / np.prod(np.shape(expected)) > allow_mismatch_ratio:
                raise ConformanceMismatch(_mismatch_summary(name, got, expected, atol, rtol, str(exc))) from None
    elif isinstance(got, dict):
        for k, v in got.items():
            assert k in expected and expected[k] == v, f"output {name!r}: {k}={v} vs {expected.get(k)}"
    else:
        assert got == expected, f"output {name!r}: {got} vs {expected}"


def _mismatch_summary(name: str, got: np.ndarray, expected, atol: float, rtol: float, message: str) -> str:
    """One line: how far off, how many elements, at what tolerance."""
    try:
        g = np.asarray(got, dtype=np.float64)
        e = np.broadcast_to(np.asarray(expected, dtype=np.float64), g.shape)
        bad = ~np.isclose(g, e, atol=atol, rtol=rtol, equal_nan=True)
        err = np.abs(g - e)
        worst = float(np.nanmax(np.where(bad, err, 0))) if bad.any() else 0.0
        return (
            f"output {name!r} {g.shape} {got.dtype}: {int(bad.sum())}/{bad.size} elements off, "
            f"max abs error {worst:.4g} (atol={atol:g}, rtol={rtol:g})"
        )
    except Exception:  # shapes that do not broadcast, non-numeric outputs
        return f"output {name!r} (atol={atol:g}, rtol={rtol:g}): {_last_line(message)}"


def _compare_shape(mlmodel, name: str, got, expected) -> None:
    """coremltools' `compare_shapes`: runtime shape vs expected, and vs the shape in the proto."""
    from coremltools.converters.mil.testing_utils import _get_proto_output_shape

    np_types = (np.generic, np.ndarray)
    if not (isinstance(got, np_types) and isinstance(expected, np_types)):
        return
    if expected.shape == () and got.shape == (1,):
        return
    if got.shape != expected.shape:
        raise ConformanceMismatch(f"output {name!r}: expected shape {expected.shape} != actual shape {got.shape}")
    spec = mlmodel._spec
    desc = mlmodel._get_function_description(mlmodel.function_name) if mlmodel._is_multifunction() else spec.description
    if desc.predictedFeatureName != "":
        return
    proto_shape = _get_proto_output_shape(desc, name)
    if proto_shape != [] and list(proto_shape) != list(got.shape):
        raise ConformanceMismatch(f"output {name!r}: shape {got.shape} differs from the proto's {list(proto_shape)}")


def _holds_fp16(mlmodel) -> bool:
    """Any value of the converted program (input, constant, op output, nested blocks too) is fp16."""
    from coremltools.converters.mil.mil import types

    def is_fp16(var) -> bool:  # noqa: ANN001
        try:
            return var.dtype == types.fp16
        except (AttributeError, ValueError):  # a ListVar raises ValueError: "dtype not applicable"
            return False

    def block_has(block) -> bool:
        for var in block.inputs.values() if isinstance(block.inputs, dict) else block.inputs:
            if is_fp16(var):
                return True
        for op in block.operations:
            if any(is_fp16(v) for v in op.outputs):
                return True
            if any(block_has(b) for b in op.blocks):
                return True
        return False

    prog = getattr(mlmodel, "_mil_program", None)
    return prog is not None and any(block_has(f) for f in prog.functions.values())


def compare_backend(
    mlmodel,
    input_key_values,
    expected_outputs,
    dtype="fp32",
    atol=1e-04,
    rtol=1e-05,
    also_compare_shapes=True,
    state=None,
    allow_mismatch_ratio=0.0,
):
    """coremltools' `testing_utils.compare_backend` with the interpreter in place of Core ML.

    Same checks in the same order; the tolerance widening for fp16 programs is coremltools' own.
    """
    import coremltools as ct
    from coremltools.converters.mil.testing_utils import _get_coreml_out_from_dict, run_core_ml_predict

    if dtype not in ["fp32", "fp16"]:
        raise ValueError("Unsupported dtype config")
    pred = run_core_ml_predict(mlmodel, input_key_values, state)
    if expected_outputs is None:
        return pred
    if also_compare_shapes:
        try:
            for name, expected in expected_outputs.items():
                _compare_shape(mlmodel, name, _get_coreml_out_from_dict(pred, name), expected)
        except AssertionError as exc:
            record = _record()
            record.mismatch = record.mismatch or str(exc)[:600]
            raise
    # coremltools widens for fp16 backends; a program holding fp16 values (inputs, weights or ops)
    # under an fp32 backend is compared at the same fp16 tolerances: its expected outputs come from
    # the same fp16 numbers (coremltools' CI runs only fp16 backends, so it never meets this case).
    if mlmodel.compute_unit != ct.ComputeUnit.CPU_ONLY or dtype == "fp16" or _holds_fp16(mlmodel):
        atol = max(atol * 100.0, 5e-1)
        rtol = max(rtol * 100.0, 5e-2)
    try:
        for name, expected in expected_outputs.items():
            _compare_output(name, _get_coreml_out_from_dict(pred, name), expected, atol, rtol, allow_mismatch_ratio)
    except AssertionError as exc:
        record = _record()
        record.mismatch = record.mismatch or str(exc)[:600]
        raise
    _record().matched += 1
    return pred


def install_patches() -> None:
    """Point coremltools' runtime calls at the interpreter (process-wide)."""
    import coremltools.models.utils as ct_utils
    from coremltools.converters.mil import testing_utils
    from coremltools.models.model import MLModel

    testing_utils.compare_backend = compare_backend
    from coremltools.converters.mil.mil.ops.tests import testing_utils as ops_testing_utils

    ops_testing_utils.compare_backend = compare_backend
    MLModel.predict = predict
    MLModel.make_state = make_state
    from coremltools.converters import _converters_entry

    _converters_entry.gc = _YoungGenerationGc()
    # The tests' `skipif(_macos_version() < ...)` guards: the interpreter stands in for a current Core ML.
    ct_utils._macos_version = lambda: EMULATED_MACOS


# --------------------------------------------------------------------------- classification


def classify(record: CaseRecord, outcome: str, longrepr: str, skip_reason: str) -> None:
    """Settle `record.status` and `record.detail` from what the case did and how it ended.

    A case that reached the interpreter passes when the test passes (including tests that expect the
    prediction to fail, e.g. on out-of-bound indices), and also when every one of its runtime
    comparisons matched and the test then fails on a check of its own that does not involve the
    prediction (e.g. counting the casts in the converted program); it is wrong when a comparison
    mismatched, a kernel failed, or the test's own assertions on predicted values failed.
    """
    if record.unsupported:
        record.status, record.detail = "unsupported", ", ".join(record.unsupported)
    elif record.comparisons and outcome == "passed":
        record.status, record.detail = "pass", ""
    elif record.comparisons and (record.mismatch or record.error):
        record.status, record.detail = "wrong", record.mismatch or record.error
    elif record.comparisons and record.matched == record.comparisons:
        ending = f"xfail: {skip_reason}" if outcome == "skipped" else longrepr
        record.status, record.detail = "pass", f"outputs matched; the test then fails on its own check: {ending}"
    elif record.comparisons:
        record.status, record.detail = "wrong", longrepr or skip_reason
    elif outcome == "skipped":
        record.status, record.detail = "n/a", f"skipped: {skip_reason}"
    elif outcome == "passed":
        record.status, record.detail = "n/a", "no runtime comparison (type inference, errors or values only)"
    else:
        record.status, record.detail = "n/a", f"fails before any runtime call: {longrepr}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:400] if lines else ""


def _opset_dir(nodeid: str) -> str:
    for part in nodeid.replace("\\", "/").split("/"):
        if part in OPSET_DIRS:
            return part
    return "other"


# --------------------------------------------------------------------------- pytest hooks


def pytest_addoption(parser) -> None:
    group = parser.getgroup("mil-conformance")
    group.addoption("--mil-report", default=None, help="write one JSON line per test case to this file")
    group.addoption("--mil-sample", type=int, default=0, help="run every N-th collected case only (0: all)")


def pytest_configure(config) -> None:
    set_test_environment()
    install_patches()
    config._mil_records = []


class _AppleSiliconPlatform:
    """The `platform` module as the tests' guards see it: `machine()` is "arm64".

    A few tests xfail on x86_64 Macs for bugs of Core ML there (e.g. rdar://149313013 for state
    updates); the interpreter is not that runtime, so those cases run like on Apple silicon.
    """

    def __getattr__(self, name: str):
        return getattr(platform, name)

    @staticmethod
    def machine() -> str:
        return "arm64"


def pytest_collection_modifyitems(session, config, items) -> None:
    """Emulate Apple silicon for the tests' `platform.machine()` guards; with --mil-sample N, keep
    every N-th collected case of each opset directory (a spread over every op family)."""
    for module in {item.module for item in items if getattr(item, "module", None) is not None}:
        if getattr(module, "platform", None) is platform:
            module.platform = _AppleSiliconPlatform()
    n = config.getoption("--mil-sample")
    if n <= 1:
        return
    by_dir: dict[str, list] = {}
    for item in items:
        by_dir.setdefault(_opset_dir(item.nodeid), []).append(item)
    keep = {id(item) for group in by_dir.values() for item in group[::n]}
    config.hook.pytest_deselected(items=[item for item in items if id(item) not in keep])
    items[:] = [item for item in items if id(item) in keep]


class _YoungGenerationGc:
    """`gc` as coremltools' converter entry point sees it: `collect()` sweeps the young generations.

    `ct.convert` ends with a full `gc.collect()`, which walks every object torch, executorch and
    coremltools keep alive (0.2 to 1 s per conversion in this process, more than the conversion).
    A young-generation sweep frees the conversion's own cycles; older ones are left to Python's
    automatic collection. Conversion results do not depend on it.
    """

    def __getattr__(self, name: str):
        return getattr(gc, name)

    @staticmethod
    def collect(generation: int = 2) -> int:
        return gc.collect(min(generation, 1))


def pytest_collection_finish(session) -> None:
    """Freeze what collection built (modules, ~20,000 parametrised items): out of every later sweep."""
    gc.collect()
    gc.freeze()


def pytest_runtest_setup(item) -> None:
    global _current
    _current = CaseRecord(nodeid=item.nodeid, opset_dir=_opset_dir(item.nodeid))
    item._mil_record = _current


def _pytest_hookimpl(**kw):
    import pytest

    return pytest.hookimpl(**kw)


@_pytest_hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    record: CaseRecord | None = getattr(item, "_mil_record", None)
    if record is None:
        return
    if call.excinfo is not None and call.excinfo.errisinstance(ConformanceMismatch) and not record.mismatch:
        record.mismatch = str(call.excinfo.value)[:600]
    if report.when == "call" or (report.when == "setup" and not report.passed):
        skip_reason = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            skip_reason = str(report.longrepr[2])
        elif report.skipped:
            skip_reason = str(getattr(report, "wasxfail", "") or report.longrepr)
        if hasattr(report, "wasxfail"):
            skip_reason = "xfail: " + str(report.wasxfail)
        longrepr = _last_line(str(report.longrepr)) if report.failed else ""
        classify(record, report.outcome, longrepr, skip_reason)
        item.config._mil_records.append(record)
        path = item.config.getoption("--mil-report")
        if path:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record.as_json()) + "\n")
