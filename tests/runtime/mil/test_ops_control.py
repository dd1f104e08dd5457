"""Control flow (cond, while_loop) and tensor lists (make_list, list_*) in the MIL reference
interpreter, built with coremltools' MIL Builder and checked against plain Python loops."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.mil import types

from mobex.runtime.mil import MilExecutionError, MilReferenceRunner


def _runner(mil, prog) -> MilReferenceRunner:
    runner = MilReferenceRunner(mil.convert_program(prog, target=ct.target.iOS16))
    assert runner.unsupported_ops() == []
    return runner


def test_cond_takes_the_branch_the_predicate_selects(mil):
    @mb.program(
        input_specs=[mb.TensorSpec((2,)), mb.TensorSpec((1,), dtype=types.int32)], opset_version=ct.target.iOS16
    )
    def prog(x, flag):
        pred = mb.squeeze(x=mb.greater(x=flag, y=0))
        return mb.cond(pred=pred, _true_fn=lambda: mb.mul(x=x, y=2.0), _false_fn=lambda: mb.sub(x=x, y=1.0))

    runner = _runner(mil, prog)
    x = np.array([1.5, -3.0], np.float32)
    np.testing.assert_allclose(runner.run({"x": x, "flag": np.array([1], np.int32)})[0], 2 * x)
    np.testing.assert_allclose(runner.run({"x": x, "flag": np.array([0], np.int32)})[0], x - 1)


def test_while_loop_with_a_nested_loop(mil):
    """Outer loop i < n: inner loop doubles acc (i + 1) times, then adds i: closed form checked in Python."""

    @mb.program(input_specs=[mb.TensorSpec((1,)), mb.TensorSpec((1,))], opset_version=ct.target.iOS16)
    def prog(acc, n):
        def inner_cond(j, a, limit):
            return mb.less(x=j, y=limit)

        def inner_body(j, a, limit):
            return mb.add(x=j, y=1.0), mb.mul(x=a, y=2.0), limit

        def outer_cond(i, a):
            return mb.squeeze(x=mb.less(x=i, y=n))

        def outer_body(i, a):
            _, doubled, _ = mb.while_loop(
                _cond=lambda j, a, lim: mb.squeeze(x=inner_cond(j, a, lim)),
                _body=inner_body,
                loop_vars=(np.zeros(1, np.float32), a, mb.add(x=i, y=1.0)),
            )
            return mb.add(x=i, y=1.0), mb.add(x=doubled, y=i)

        return mb.while_loop(_cond=outer_cond, _body=outer_body, loop_vars=(np.zeros(1, np.float32), acc))

    runner = _runner(mil, prog)
    for n in (0, 1, 3):
        a = 1.0
        for i in range(n):
            a = a * 2 ** (i + 1) + i
        i_out, a_out = runner.run({"acc": np.array([1.0], np.float32), "n": np.array([n], np.float32)})
        assert float(i_out[0]) == n and float(a_out[0]) == a


def test_list_write_grow_scatter_gather(mil):
    @mb.program(input_specs=[mb.TensorSpec((2,)), mb.TensorSpec((2,))], opset_version=ct.target.iOS16)
    def prog(a, b):
        ls = mb.make_list(init_length=2, elem_shape=(2,))
        first = mb.list_read(ls=ls, index=0)  # never written: zeros
        ls = mb.list_write(ls=ls, index=0, value=a)
        ls = mb.list_write(ls=ls, index=4, value=b)  # grows the (dynamic) list to length 5
        ls = mb.list_scatter(ls=ls, indices=[2, 1], value=np.array([[-1, -2], [-4, -5]], np.float32))
        return first, mb.list_gather(ls=ls, indices=[4, 2, 3, 0]), mb.list_length(ls=ls)

    first, gathered, length = _runner(mil, prog).run(
        {"a": np.array([1, 3], np.float32), "b": np.array([2, 4], np.float32)}
    )
    np.testing.assert_array_equal(first, [0, 0])
    np.testing.assert_array_equal(gathered, [[2, 4], [-1, -2], [0, 0], [1, 3]])
    assert int(np.asarray(length).reshape(-1)[0]) == 5


def test_list_built_in_a_loop(mil):
    """Appends update * i for i < n inside a while_loop, then gathers the whole list."""

    @mb.program(input_specs=[mb.TensorSpec((1,)), mb.TensorSpec((2,))], opset_version=ct.target.iOS16)
    def prog(n, update):
        def body(i, ls):
            value = mb.mul(x=update, y=mb.cast(x=i, dtype="fp32"))
            return mb.add(x=i, y=1), mb.list_write(ls=ls, index=i, value=value)

        def cond(i, ls):
            return mb.less(x=mb.cast(x=i, dtype="fp32"), y=mb.squeeze(x=n))

        _, ls = mb.while_loop(_cond=cond, _body=body, loop_vars=(0, mb.make_list(init_length=1, elem_shape=(2,))))
        return mb.list_gather(ls=ls, indices=mb.range_1d(start=0, end=mb.list_length(ls=ls), step=1))

    (got,) = _runner(mil, prog).run({"n": np.array([4], np.float32), "update": np.array([1, 2], np.float32)})
    np.testing.assert_array_equal(got, [[0, 0], [1, 2], [2, 4], [3, 6]])


def test_list_read_out_of_range_is_an_execution_error(mil):
    @mb.program(input_specs=[mb.TensorSpec((1,), dtype=types.int32)], opset_version=ct.target.iOS16)
    def prog(i):
        ls = mb.make_list(init_length=2, elem_shape=(3,), dynamic_length=False)
        return mb.list_read(ls=ls, index=mb.squeeze(x=i))

    runner = _runner(mil, prog)
    np.testing.assert_array_equal(runner.run({"i": np.array([1], np.int32)})[0], np.zeros(3))
    with pytest.raises(MilExecutionError, match="out of range"):
        runner.run({"i": np.array([5], np.int32)})
