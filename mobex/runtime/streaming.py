"""Streaming models, run as the app runs them: step by step, each step fed the state the model itself returned.

A recipe's `[[state]]` pairs name a state input and the output that holds the next state. `run_sequences`
takes any runner's `run(feed) -> outputs` (torch, LiteRT, the MIL interpreter, Core ML) and runs every
sequence of the data from its initial state, feeding back the runner's **own** state output at every step,
never a recorded one: a variant whose state drifts shows it, step after step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mobex.data import Dataset, Sequences

Run = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def run_sequences(
    run: Run, sequences: Sequences, states: list[tuple[str, int]]
) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Every output per step, [S, T, ...] per output, and the state fed at every step, [S, T, ...] per state input.

    `states`: (state input name, index of the output holding its next state).
    """
    per_group: list[list[list[np.ndarray]]] = []  # group -> step -> outputs
    fed_groups: list[dict[str, list[np.ndarray]]] = []
    for rows in sequences.groups():
        state = {name: sequences.initial[name][rows] for name, _ in states}
        steps, fed = [], {name: [] for name, _ in states}
        for t in range(sequences.num_steps):
            feed = {name: arr[rows, t] for name, arr in sequences.steps.items()}
            for name, value in state.items():
                fed[name].append(value)
            outputs = [np.asarray(o) for o in run({**feed, **state})]
            for name, index in states:
                state[name] = _as_state(outputs[index], sequences.initial[name], name)
            steps.append(outputs)
        per_group.append(steps)
        fed_groups.append(fed)
    count = len(per_group[0][0])
    outputs = [
        np.concatenate([np.stack([step[i] for step in group], axis=1) for group in per_group], axis=0)
        for i in range(count)
    ]
    fed_states = {name: np.concatenate([np.stack(g[name], axis=1) for g in fed_groups], axis=0) for name, _ in states}
    return outputs, fed_states


def _as_state(output: np.ndarray, like: np.ndarray, name: str) -> np.ndarray:
    if output.shape[1:] != like.shape[1:]:
        raise ValueError(
            f"state output for {name!r} has shape {list(output.shape)}, but the state input takes "
            f"{[output.shape[0], *like.shape[1:]]}: a [[state]] pair must have the same shape"
        )
    return np.ascontiguousarray(output, dtype=like.dtype)


def flatten_steps(outputs: list[np.ndarray]) -> list[np.ndarray]:
    """[S, T, ...] per output -> [S * T, ...], sequence by sequence (the order of a streaming data set's labels)."""
    return [o.reshape(o.shape[0] * o.shape[1], *o.shape[2:]) for o in outputs]


def state_indices(recipe: Any, output_names: list[str]) -> list[tuple[str, int]]:
    """The recipe's [[state]] pairs as (state input, output index)."""
    return [(s.input, output_names.index(s.output)) for s in recipe.state]


def with_recorded_states(model: Any, recipe: Any, data: Dataset) -> Dataset:
    """`data` with the states the torch `model` feeds itself step by step: what a streaming model's
    calibration sees (int8 ranges of the real states, not of zeros)."""
    from mobex.runtime.torch_model import TorchRunner

    if data.sequences is None:
        return data
    runner = TorchRunner(model, [i.name for i in recipe.inputs])
    names = recipe.output_names(len(runner.run(data.feed(0))))
    _, fed = run_sequences(runner.run, data.sequences, state_indices(recipe, names))
    return data.with_fed_states(fed)
