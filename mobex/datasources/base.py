"""What every data source hands to mobex.data: arrays per input, labels, and what was found on the way.

A source reads data as an app developer holds it (an .npz, a folder of pictures or sounds, a table)
and returns `RawData`; mobex.data then runs the same checks on it whatever the source (shapes, dtypes,
NaN, ranges, labels), so the rest of the build does not know where the data came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from mobex.errors import DataError

if TYPE_CHECKING:
    from mobex.recipe import Recipe

MAX_LISTED_PROBLEMS = 20  # a DataError lists at most this many bad files (and counts the rest)


@dataclass
class Check:
    """One data check for the report: what was checked and what was found."""

    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True)
class SourceRequest:
    """One data set to read: the recipe (inputs, preprocessing, [data] options), its role and its path."""

    recipe: Recipe
    role: str
    path: Path  # absolute

    @property
    def label(self) -> str:
        return f"[data].{self.role} ({self.path.name})"

    @property
    def options(self):  # noqa: ANN201 - the recipe's DataSection (mobex.recipe.DataSourceOptions)
        return self.recipe.data


@dataclass
class RawData:
    """Arrays named after the inputs (sample axis first), optional labels, and the source's own checks."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    checks: list[Check] = field(default_factory=list)
    found: list[str] | None = None  # every array name the source holds, for "no array named ..." errors


class DataSource(Protocol):
    """One way of holding data. `claims` decides by the path (and the recipe); `read` does the work."""

    name: str

    def claims(self, request: SourceRequest) -> bool: ...

    def read(self, request: SourceRequest) -> RawData: ...


class DecodingSource(Protocol):
    """A source whose decoded arrays are worth caching: it lists its files first, then decodes them."""

    name: str
    version: int  # bump when the decoded arrays of the same files would change

    def claims(self, request: SourceRequest) -> bool: ...

    def inventory(self, request: SourceRequest) -> list[Path]: ...

    def decode(self, request: SourceRequest, files: list[Path]) -> RawData: ...


@dataclass
class Problems:
    """Bad files (or rows) met while decoding: refused together, or left out when the recipe says so."""

    request: SourceRequest
    found: list[tuple[str, str]] = field(default_factory=list)  # (where, why)

    def add(self, where: Path | str, why: str) -> None:
        self.found.append((str(where), why))

    def settle(self, what: str = "files") -> list[Check]:
        """Raise DataError listing every problem, or (skip_bad_files) return the check that counts them."""
        if not self.found:
            return []
        listed = "\n  ".join(f"{where}: {why}" for where, why in self.found[:MAX_LISTED_PROBLEMS])
        more = len(self.found) - MAX_LISTED_PROBLEMS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        if not self.request.options.skip_bad_files:
            raise DataError(
                f"{self.request.label}: {len(self.found)} bad {what}:\n  {listed}{tail}",
                "fix or remove them, or set [data].skip_bad_files = true to leave them out (the report counts them)",
            )
        return [
            Check(f"{self.request.role}.bad_{what}", False, f"{len(self.found)} bad {what} left out: {listed}{tail}")
        ]


def pick_samples(count: int, request: SourceRequest) -> np.ndarray:
    """Indices of the samples kept: all, or `[data].max_samples` of them drawn with `[data].seed`, in order."""
    limit = request.options.max_samples
    if limit is None or count <= limit:
        return np.arange(count)
    rng = np.random.default_rng(request.options.seed)
    return np.sort(rng.choice(count, size=limit, replace=False))


def whole_batches(raw: RawData, batch: int, role: str) -> RawData:
    """Drop the last samples that do not fill a batch (decoded data; an .npz must fit exactly)."""
    n = next(iter(raw.arrays.values())).shape[0]
    keep = n - n % batch
    if keep == n:
        return raw
    if keep == 0:
        raise DataError(f"[data].{role}: {n} samples, fewer than one batch of {batch}")
    arrays = {k: v[:keep] for k, v in raw.arrays.items()}
    labels = raw.labels[:keep] if raw.labels is not None else None
    note = Check(
        f"{role}.batches",
        False,
        f"{n - keep} trailing samples dropped: {n} is not a multiple of the batch size {batch}",
    )
    return RawData(arrays, labels, [*raw.checks, note])
