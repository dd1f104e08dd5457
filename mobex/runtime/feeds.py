"""What every runner says when a feed does not match the model's inputs."""

from __future__ import annotations

from mobex.errors import DataError


def missing_input(name: str, feed: dict, expected: list[str]) -> DataError:
    return DataError(
        f"input {name!r} is missing from the feed (got {sorted(feed)}, the model takes {expected})",
        hint="name the arrays in the data file after the recipe's [[inputs]]",
    )
