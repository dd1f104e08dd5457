"""The MIL reference interpreter held to coremltools' own MIL op tests (see
mobex/runtime/mil/conformance.py): a spread sample of the cases in the default run, the whole
suite as a slow test (also `python scripts/mil_conformance.py`)."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb

from mobex.runtime.mil import conformance
from mobex.runtime.mil.conformance import OPSET_DIRS, CaseRecord, ConformanceMismatch, classify
from mobex.runtime.mil.conformance_suite import executed_share, format_table, reasons, run_suite, summarise

SAMPLE_EVERY = 70  # about 280 of the ~19,700 cases, spread over every opset directory


def _assert_conforms(records, min_executed: float) -> None:
    table = summarise(records)
    detail = format_table(table) + "\n" + "\n".join(f"{n} {t}: {d}" for n, t, d in reasons(records, "wrong"))
    assert table["total"]["wrong"] == 0, detail
    assert executed_share(table["total"]) >= min_executed, detail


def test_sample_of_coremltools_op_tests():
    records = run_suite(sample=SAMPLE_EVERY, timeout=900)
    table = summarise(records)
    assert set(OPSET_DIRS) <= set(table), table
    assert table["total"]["pass"] >= 0.5 * len(records), format_table(table)
    _assert_conforms(records, min_executed=0.98)


@pytest.mark.slow
def test_all_coremltools_op_tests():
    """Every case (about 19,700; tens of minutes of CPU): 0 wrong, >= 98 % of the runtime comparisons executed."""
    _assert_conforms(run_suite(timeout=4 * 3600), min_executed=0.98)


# --------------------------------------------------------------------------- the harness itself


def test_programs_holding_tensor_lists_are_compared():
    """The fp16 scan of the harness reads every value's dtype; a ListVar raises ValueError for it (these two
    cases were the whole suite's only `wrong` ones, from the harness, not the interpreter)."""
    records = run_suite(("iOS14",), select="TestList", timeout=600)
    assert len(records) >= 2 and all(r["status"] == "pass" for r in records), records


def _record(**kw) -> CaseRecord:
    return CaseRecord(nodeid="x/iOS17/test_y.py::T::t[p]", opset_dir="iOS17", **kw)


@pytest.mark.parametrize(
    ("record", "outcome", "status"),
    [
        (_record(comparisons=1), "passed", "pass"),
        (_record(comparisons=1, mismatch="output 'y': 3/4 elements off"), "failed", "wrong"),
        (_record(comparisons=2), "failed", "wrong"),  # a test's own assertion on predicted values
        (_record(comparisons=1, matched=1), "failed", "pass"),  # fails later on a check of the program
        (_record(comparisons=1, mismatch="off"), "passed", "pass"),  # the test expected the mismatch
        (_record(comparisons=1, error="MilExecutionError: op failed"), "failed", "wrong"),
        (_record(comparisons=1, unsupported=["lstm"]), "failed", "unsupported"),
        (_record(), "passed", "n/a"),  # type inference only
        (_record(), "skipped", "n/a"),
        (_record(), "failed", "n/a"),  # fails before reaching Core ML (e.g. a missing dependency)
    ],
)
def test_classification(record, outcome, status):
    classify(record, outcome, "boom", "reason")
    assert record.status == status
    if status != "pass":
        assert record.detail
    elif outcome != "passed":
        assert "outputs matched" in record.detail


def test_compare_backend_catches_a_mismatch(mil, monkeypatch):
    """The stand-in for coremltools' compare_backend really compares: a wrong expectation fails."""
    monkeypatch.setattr(ct.models.MLModel, "predict", conformance.predict)

    @mb.program(input_specs=[mb.TensorSpec((2, 3))], opset_version=ct.target.iOS16)
    def prog(x):
        return mb.relu(x=x, name="y")

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                       compute_precision=ct.precision.FLOAT32, compute_units=ct.ComputeUnit.CPU_ONLY)  # fmt: skip
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    conformance.compare_backend(model, {"x": x}, {"y": np.maximum(x, 0)}, dtype="fp32")
    wrong = np.maximum(x, 0)
    wrong[0, 1] += 1e-3
    with pytest.raises(ConformanceMismatch, match=r"1/6 elements off"):
        conformance.compare_backend(model, {"x": x}, {"y": wrong}, dtype="fp32")
    # fp16 tolerance (atol 0.5) admits the same error
    conformance.compare_backend(model, {"x": x}, {"y": wrong}, dtype="fp16")
    with pytest.raises(ConformanceMismatch, match="shape"):
        conformance.compare_backend(model, {"x": x}, {"y": wrong[:1]}, dtype="fp32")


def test_disputed_cases_are_counted_apart_from_wrong():
    lrn = (
        "/x/coremltools/converters/mil/mil/ops/tests/iOS14/test_normalization.py::"
        "TestNormalizationLocalResponseNorm::test_builder_to_backend_smoke[backend=(precision='{}')]"
    )
    records = [
        {"nodeid": lrn.format("fp32"), "opset_dir": "iOS14", "status": "wrong", "detail": "3/6 elements off"},
        {"nodeid": lrn.format("fp16"), "opset_dir": "iOS14", "status": "wrong", "detail": "3/6 elements off"},
        {"nodeid": lrn.format("fp32").replace("smoke", "stress"), "opset_dir": "iOS14", "status": "pass", "detail": ""},
    ]
    row = summarise(records)["total"]
    assert (row["pass"], row["wrong"], row["disputed"]) == (1, 1, 1)  # only the listed fp32 case is disputed
    assert executed_share(row) == 1.0
    (n, _, detail), *_ = reasons(records, "disputed")
    assert n == 1 and "axis -3" in detail and "3/6 elements off" in detail
