"""Streaming runs: every sequence step by step, each runner fed its own state output.

The models are small numpy recurrences with a known answer: a leaky integrator h' = a*h + x, whose output is
the state. A variant whose state update is slightly off (a = 0.92 instead of 0.9) matches at step 0 and drifts
after: on its own state the error grows step by step, which evaluation on recorded states would never show.
"""

from __future__ import annotations

import numpy as np
import pytest

from mobex.data import Sequences
from mobex.metrics.streaming import step_parity
from mobex.runtime.streaming import flatten_steps, run_sequences


def _integrator(a: float):  # noqa: ANN202
    def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        h = a * feed["h"] + feed["x"]
        return [2.0 * h, h]  # a readout and the next state

    return run


@pytest.fixture()
def sequences() -> Sequences:
    rng = np.random.default_rng(0)
    steps = {"x": rng.normal(size=(6, 20, 3)).astype(np.float32)}  # 6 sequences of 20 steps, 3 values a step
    return Sequences(steps, {"h": np.zeros((6, 3), np.float32)}, batch=2)


def test_each_runner_is_fed_its_own_state(sequences: Sequences) -> None:
    outputs, fed = run_sequences(_integrator(0.9), sequences, [("h", 1)])
    assert [o.shape for o in outputs] == [(6, 20, 3), (6, 20, 3)]
    x = sequences.steps["x"]
    h = np.zeros((6, 3), np.float32)
    for t in range(20):
        np.testing.assert_allclose(fed["h"][:, t], h, rtol=1e-6)  # what was fed at step t: its own last state
        h = 0.9 * h + x[:, t]
        np.testing.assert_allclose(outputs[1][:, t], h, rtol=1e-5)
    assert fed["h"].shape == (6, 20, 3) and np.all(fed["h"][:, 0] == 0)


def test_a_drifting_state_shows_step_by_step(sequences: Sequences) -> None:
    reference, _ = run_sequences(_integrator(0.9), sequences, [("h", 1)])
    variant, _ = run_sequences(_integrator(0.92), sequences, [("h", 1)])
    report = step_parity(["y", "h_out"], reference, variant)
    errors = [s["max_abs_error"] for s in report["per_step"]]
    assert errors[0] == 0.0  # the first step starts from the same zero state
    assert errors[-1] > 10 * errors[1]  # and the error compounds
    assert report["steps"] == 20 and report["sequences"] == 6
    assert report["last_step"]["max_abs_error"] == errors[-1]
    assert [o["name"] for o in report["last_step"]["outputs"]] == ["y", "h_out"]


def test_flat_steps_are_sequence_by_sequence(sequences: Sequences) -> None:
    outputs, _ = run_sequences(_integrator(0.9), sequences, [("h", 1)])
    flat = flatten_steps(outputs)
    assert flat[0].shape == (120, 3)
    np.testing.assert_array_equal(flat[0][20:40], outputs[0][1])  # rows 20..39: sequence 1, steps 0..19


def test_a_state_of_the_wrong_shape_is_refused(sequences: Sequences) -> None:
    def wrong(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [feed["x"], feed["x"][:, :2]]

    with pytest.raises(ValueError, match="same shape"):
        run_sequences(wrong, sequences, [("h", 1)])
