"""Random ops in the MIL reference interpreter. Core ML's generator cannot be reproduced, so what is
checked is what the op definitions fix: shapes, exact degenerate cases, a seed reproducing its
values, and the distribution (mean, variance, range) of large samples."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
from coremltools.converters.mil import Builder as mb

from mobex.runtime.mil import MilReferenceRunner

N = 200_000  # samples: the standard error of a mean is ~0.002 sigma


def _runner(mil, build) -> MilReferenceRunner:
    @mb.program(input_specs=[mb.TensorSpec((1,))], opset_version=ct.target.iOS16)
    def prog(x):
        return [mb.add(x=x, y=0.0), *build()]

    runner = MilReferenceRunner(mil.convert_program(prog, target=ct.target.iOS16))
    assert runner.unsupported_ops() == []
    return runner


def _draw(runner):
    return runner.run({"x": np.zeros(1, np.float32)})[1:]


def test_distributions(mil):
    shape = np.array([N], np.int32)
    runner = _runner(
        mil,
        lambda: [
            mb.random_normal(shape=shape, mean=2.0, stddev=3.0),
            mb.random_uniform(shape=shape, low=-1.0, high=5.0),
            mb.random_bernoulli(shape=shape, prob=0.3),
        ],
    )
    normal, uniform, bernoulli = _draw(runner)
    assert abs(normal.mean() - 2.0) < 0.05 and abs(normal.std() - 3.0) < 0.05
    assert abs(((normal - 2.0) / 3.0) ** 3).mean() == pytest.approx(2 * np.sqrt(2 / np.pi), abs=0.05)  # E|z|^3
    assert uniform.min() >= -1.0 and uniform.max() < 5.0
    assert abs(uniform.mean() - 2.0) < 0.03 and abs(uniform.var() - 36 / 12) < 0.05
    assert set(np.unique(bernoulli)) == {0.0, 1.0} and abs(bernoulli.mean() - 0.3) < 0.01


def test_categorical_frequencies(mil):
    logits = np.log(np.array([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]], np.float32))
    runner = _runner(
        mil,
        lambda: [
            mb.random_categorical(x=logits, size=50_000, mode="logits"),
            mb.random_categorical(x=np.exp(logits), size=50_000, mode="probs"),
        ],
    )
    for draws in _draw(runner):
        assert draws.shape == (2, 50_000)
        for row, p in zip(draws, np.exp(logits), strict=True):
            np.testing.assert_allclose(np.bincount(row.astype(int), minlength=3) / row.size, p, atol=0.01)


def test_degenerate_parameters_are_exact(mil):
    shape = np.array([2, 1, 3], np.int32)
    runner = _runner(
        mil,
        lambda: [
            mb.random_normal(shape=shape, mean=1.5, stddev=0.0),
            mb.random_uniform(shape=shape, low=4.0, high=4.0),
            mb.random_bernoulli(shape=shape, prob=1.0),
            mb.random_bernoulli(shape=shape, prob=0.0),
        ],
    )
    normal, uniform, ones, zeros = _draw(runner)
    assert normal.shape == (2, 1, 3)
    np.testing.assert_array_equal(normal, 1.5)
    np.testing.assert_array_equal(uniform, 4.0)
    np.testing.assert_array_equal(ones, 1.0)
    np.testing.assert_array_equal(zeros, 0.0)


def test_seed_reproduces_and_no_seed_draws_anew(mil):
    shape = np.array([64], np.int32)
    runner = _runner(
        mil,
        lambda: [
            mb.random_uniform(shape=shape, seed=7),
            mb.random_uniform(shape=shape, seed=7),
            mb.random_uniform(shape=shape),
        ],
    )
    (a1, b1, c1), (a2, _, c2) = _draw(runner), _draw(runner)
    np.testing.assert_array_equal(a1, a2)  # the same seed, run after run
    np.testing.assert_array_equal(a1, b1)  # and op after op
    assert not np.array_equal(c1, c2)  # unseeded: not folded at load, a new draw each run
