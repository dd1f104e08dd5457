"""Bounded parsing of text mobex does not trust: JSON and TOML with a size cap and a nesting cap.

Python's `json` and `tomllib` recurse once per nesting level, so `"[" * 200000` ends in a
RecursionError (a traceback, not a clear error) long before the parser notices anything else.
Every signature file, manifest, DSSE envelope and payload, pointer, root, index, reference
statistics asset and recipe is therefore measured first: its size, then its nesting depth, counted
outside strings (and comments, for TOML) without recursion. Too large or too deep raises
`LimitExceeded`, a ValueError, so the callers' existing "not valid JSON" handling turns it into
their own error class (VerificationError for bundle and registry material, RecipeError for recipes).

`name_list` keeps error messages short when a hostile input has thousands of offending names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any

MAX_DEPTH = 64  # mobex's own documents nest at most ~8 levels
MAX_JSON_BYTES = 64 << 20
MAX_TOML_BYTES = 1 << 20
MAX_NAMES_IN_MESSAGE = 10

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# TOML: multi-line strings first, then one-line basic and literal strings, then comments.
_TOML_SKIP = re.compile(rb'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"[^"\\\n]*(?:\\.[^"\\\n]*)*"|\'[^\'\n]*\'|#[^\n]*')
_BRACKETS_ONLY = bytes(range(256)).translate(None, b"[]{}")  # every byte except brackets: deleted
_AS_PARENS = bytes.maketrans(b"[]{}", b"()()")


class LimitExceeded(ValueError):
    """An input over mobex's size or nesting limit; a ValueError so parse-error handlers catch it."""


def nesting_depth(data: bytes, *, skip: re.Pattern[bytes] = _JSON_STRING, stop_at: int | None = None) -> int:
    """How deeply `[`/`{` nest in `data`, ignoring what `skip` matches (strings, comments).

    Counted without recursion: each round deletes every innermost `()` pair, so the number of rounds
    is the depth. Unbalanced leftovers (e.g. only openers) count as further levels. With `stop_at`,
    counting stops once the depth is known to exceed it.
    """
    text = skip.sub(b"", data).translate(None, _BRACKETS_ONLY).translate(_AS_PARENS)
    depth = 0
    while text:
        if stop_at is not None and depth > stop_at:
            return depth
        shorter = text.replace(b"()", b"")
        if shorter == text:  # no adjacent pair left: ")))(((": the openers nest this much more
            return depth + max(text.count(b"("), text.count(b")"))
        text = shorter
        depth += 1
    return depth


def check_json_limits(
    data: bytes | str, what: str, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH
) -> bytes:
    """`data` as bytes, after checking its size and nesting depth (LimitExceeded otherwise)."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise LimitExceeded(f"{what} is {len(raw)} bytes, more than the {max_bytes} allowed")
    depth = nesting_depth(raw, stop_at=max_depth)
    if depth > max_depth:
        raise LimitExceeded(f"{what} nests deeper than {max_depth} levels")
    return raw


def loads_json(
    data: bytes | str,
    what: str = "JSON document",
    *,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_DEPTH,
    object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None,
    parse_constant: Callable[[str], Any] | None = None,
) -> Any:
    """json.loads with a size and a nesting cap (LimitExceeded); other errors are json's ValueErrors."""
    raw = check_json_limits(data, what, max_bytes=max_bytes, max_depth=max_depth)
    return json.loads(raw.decode("utf-8"), object_pairs_hook=object_pairs_hook, parse_constant=parse_constant)


def check_toml_limits(data: bytes, what: str, *, max_bytes: int = MAX_TOML_BYTES, max_depth: int = MAX_DEPTH) -> None:
    """Refuse TOML over the size cap or with arrays / inline tables nested deeper than `max_depth`.

    Table headers (`[a]`, `[[a]]`) count as one or two levels; that only makes the check stricter.
    """
    if len(data) > max_bytes:
        raise LimitExceeded(f"{what} is {len(data)} bytes, more than the {max_bytes} allowed")
    depth = nesting_depth(data, skip=_TOML_SKIP, stop_at=max_depth)
    if depth > max_depth:
        raise LimitExceeded(f"{what} nests arrays or inline tables deeper than {max_depth} levels")


def short(text: str, limit: int = 200) -> str:
    """`text` cut to `limit` characters (a hostile name can be 64 KiB long)."""
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


def name_list(names: Iterable[str], limit: int = MAX_NAMES_IN_MESSAGE) -> str:
    """`a, b, c` or `a, b, ... and 9990 more`: an error message stays short whatever the input."""
    items = list(names)
    shown = ", ".join(short(n) for n in items[:limit])
    return shown if len(items) <= limit else f"{shown} ... and {len(items) - limit} more"
