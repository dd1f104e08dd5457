"""Where an int8 search measures its independent candidates: in this process, or fanned out (Ray tasks).

The fallback search's sensitivity pass (mobex.quantize.tflite.search.sensitivity) builds and measures one
candidate per quantizable op (only that op in int8), and no candidate depends on another: the one part
of the search that can run anywhere at once. Its growth and bisection steps depend on each other's
results and stay where the search runs.

A `CandidatePool` maps a function over items with one shared, read-only value (the quantizer: its float
model, calibration and reference outputs), in item order. The search asks `current_pool()`; the default
runs here. `mobex.fleet.ray_executor` installs its Ray pool with `using_pool` inside each export task of
`--executor ray`, so a build on a Ray cluster measures those candidates as Ray tasks. The results are
the same either way (the same code measures the same candidate on the same data), so the bundles are too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

Shared = TypeVar("Shared")
Item = TypeVar("Item")
Result = TypeVar("Result")


class CandidatePool(Protocol):
    """Runs `fn(shared, item)` for every item; results in item order."""

    name: str  # what the report says the candidates ran on

    def map(self, fn: Callable[[Any, Any], Any], shared: Any, items: Sequence[Any]) -> list[Any]: ...


class InProcessPool:
    """One candidate after another, in this process (the default)."""

    name = "this process"

    def map(self, fn: Callable[[Shared, Item], Result], shared: Shared, items: Sequence[Item]) -> list[Result]:
        return [fn(shared, item) for item in items]


_current: CandidatePool = InProcessPool()


def current_pool() -> CandidatePool:
    """The pool independent candidates go to in this process right now."""
    return _current


@contextlib.contextmanager
def using_pool(pool: CandidatePool) -> Iterator[CandidatePool]:
    """Send independent candidates to `pool` for the duration of the block (then back to the previous pool)."""
    global _current
    previous, _current = _current, pool
    try:
        yield pool
    finally:
        _current = previous
