"""Stateful programs (iOS18 read_state / coreml_update_state) in the MIL reference interpreter:
state carried across `run` calls the way Core ML's MLState carries it across predictions."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

from mobex.errors import DataError
from mobex.runtime.mil import MilReferenceRunner, MilState


@pytest.fixture
def accumulator(mil) -> MilReferenceRunner:
    """acc <- acc + x, returns the new acc: a running sum kept in an fp16 state."""

    @mb.program(
        input_specs=[mb.StateTensorSpec((2, 3), dtype=types.fp16), mb.TensorSpec((2, 3), dtype=types.fp16)],
        opset_version=ct.target.iOS18,
    )
    def prog(acc, x):
        total = mb.add(x=mb.read_state(input=acc), y=x)
        mb.coreml_update_state(state=acc, value=total)
        return mb.mul(x=total, y=np.float16(1.0))

    return MilReferenceRunner(mil.convert_program(prog, target=ct.target.iOS18, fp16=True))


def test_state_is_carried_across_runs(accumulator):
    assert accumulator.is_stateful
    assert [s.name for s in accumulator.states] == ["acc"]
    assert [s.name for s in accumulator.inputs] == ["x"]
    state = accumulator.make_state()
    x = np.arange(6, dtype=np.float16).reshape(2, 3)
    for step in range(1, 4):
        (out,) = accumulator.run({"x": x}, state=state)
        np.testing.assert_array_equal(out, step * x)
        np.testing.assert_array_equal(state.read("acc"), step * x)


def test_fresh_state_per_run_without_one(accumulator):
    x = np.ones((2, 3), np.float16)
    for _ in range(2):
        (out,) = accumulator.run({"x": x})
        np.testing.assert_array_equal(out, x)


def test_state_can_be_written_and_is_fp16(accumulator):
    state = accumulator.make_state()
    state.write("acc", np.full((2, 3), 1000.1, np.float32))
    (out,) = accumulator.run({"x": np.zeros((2, 3), np.float16)}, state=state)
    # 1000.1 is not an fp16 value: the state holds the nearest one, 1000.0
    np.testing.assert_array_equal(out, np.full((2, 3), 1000.0, np.float16))
    assert state.read("acc").dtype == np.float16
    with pytest.raises(DataError, match="shape"):
        state.write("acc", np.zeros(3))
    with pytest.raises(DataError, match="no state named"):
        state.read("cache")


def test_state_of_another_program_is_refused(accumulator):
    with pytest.raises(DataError, match="no buffer"):
        accumulator.run({"x": np.zeros((2, 3), np.float16)}, state=MilState({}, {}))


def test_kv_cache_style_slice_update(mil):
    """A cache updated at a position given as input: the typical LLM decode step. Each run returns
    the sum of the rows the earlier runs wrote (the cache as read before this run's update)."""

    @mb.program(
        input_specs=[
            mb.StateTensorSpec((4, 2), dtype=types.fp16),
            mb.TensorSpec((1, 2), dtype=types.fp16),
            mb.TensorSpec((1,), dtype=types.int32),
        ],
        opset_version=ct.target.iOS18,
    )
    def prog(cache, row, pos):
        end = mb.add(x=pos, y=1)
        begin = mb.concat(values=[pos, np.array([0], np.int32)], axis=0)
        stop = mb.concat(values=[end, np.array([2], np.int32)], axis=0)
        before = mb.read_state(input=cache)
        updated = mb.slice_update(x=before, update=row, begin=begin, end=stop)
        mb.coreml_update_state(state=cache, value=updated)
        return mb.reduce_sum(x=before, axes=[0])

    runner = MilReferenceRunner(mil.convert_program(prog, target=ct.target.iOS18, fp16=True))
    state = runner.make_state()
    rows = np.array([[1, 2], [3, 4], [5, 6]], np.float16)
    for i, row in enumerate(rows):
        (total,) = runner.run({"row": row[None], "pos": np.array([i], np.int32)}, state=state)
        np.testing.assert_array_equal(total, rows[:i].sum(axis=0))
    want = np.zeros((4, 2), np.float16)
    want[:3] = rows
    np.testing.assert_array_equal(state.read("cache"), want)
