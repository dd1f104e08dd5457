"""Tables: CSV (the standard library's csv module) and Parquet (pyarrow), one row per sample.

The columns of each input come from `[preprocessing]` (`feature_names`, or `columns` per input), else
every column but the label column, in file order. `[data].label_column` (default: a column named
"label", if any) holds the labels: class names from `[model].labels`, or class indices, or regression
targets. A missing column refuses the file; a cell that is not a number is a bad row (left out only
with `[data].skip_bad_files = true`).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from mobex.datasources.base import Check, Problems, RawData, SourceRequest, pick_samples
from mobex.errors import DataError
from mobex.preprocessing import TabularPreprocessing

MAX_TABLE_BYTES = 2 * 1024**3  # a bound on one table file
DEFAULT_LABEL_COLUMN = "label"


class CsvTable:
    name = "csv"
    version = 1
    suffixes = (".csv", ".tsv")

    def claims(self, request: SourceRequest) -> bool:
        return request.path.is_file() and request.path.suffix.lower() in self.suffixes

    def inventory(self, request: SourceRequest) -> list[Path]:
        return [request.path]

    def decode(self, request: SourceRequest, files: list[Path]) -> RawData:
        _bounded(request.path)
        delimiter = "\t" if request.path.suffix.lower() == ".tsv" else ","
        with open(request.path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if not header:
                raise DataError(f"{request.label}: the file is empty (no header row)")
            rows = list(reader)
        columns = {name: [row[i] if i < len(row) else "" for row in rows] for i, name in enumerate(header)}
        ragged = [n + 2 for n, row in enumerate(rows) if len(row) != len(header)]
        return table_data(request, [h for h in header], columns, ragged)


class ParquetTable:
    name = "parquet"
    version = 1

    def claims(self, request: SourceRequest) -> bool:
        return request.path.is_file() and request.path.suffix.lower() in (".parquet", ".pq")

    def inventory(self, request: SourceRequest) -> list[Path]:
        return [request.path]

    def decode(self, request: SourceRequest, files: list[Path]) -> RawData:
        import pyarrow.parquet as pq

        _bounded(request.path)
        try:
            table = pq.read_table(request.path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
            raise DataError(f"{request.label}: {request.path} is not a readable Parquet file: {exc}") from None
        columns = {name: table.column(name).to_pylist() for name in table.column_names}
        return table_data(request, list(table.column_names), columns, [])


def _bounded(path: Path) -> None:
    if path.stat().st_size > MAX_TABLE_BYTES:
        raise DataError(f"{path} is larger than {MAX_TABLE_BYTES // 1024**3} GiB; split it or use an .npz")


def table_data(request: SourceRequest, header: list[str], columns: dict[str, list], ragged: list[int]) -> RawData:
    """Rows of named columns to input arrays and labels; bad rows are reported by row number."""
    recipe = request.recipe
    label_col = request.options.label_column or (DEFAULT_LABEL_COLUMN if DEFAULT_LABEL_COLUMN in columns else None)
    if request.options.label_column and label_col not in columns:
        raise DataError(f"{request.label}: no column {label_col!r} ([data].label_column); found {', '.join(header)}")
    wanted, checks = _input_columns(request, header, label_col)
    missing = sorted({c for cols in wanted.values() for c in cols} - set(columns))
    if missing:
        raise DataError(
            f"{request.label}: missing column(s) {', '.join(map(repr, missing))} (found: {', '.join(header)})",
            "name the columns like [preprocessing].feature_names (or columns), or fix the file's header row",
        )
    problems = Problems(request)
    for line in ragged:
        problems.add(f"{request.path}:{line}", "has a different number of cells than the header")
    count = len(next(iter(columns.values()))) if columns else 0
    values: dict[str, np.ndarray] = {}
    bad_rows: set[int] = set()
    for name, cols in wanted.items():
        values[name] = _numbers(request, columns, cols, problems, bad_rows)
    labels = _labels(request, columns[label_col], problems, bad_rows) if label_col else None
    checks += problems.settle("rows")
    good = np.array([r for r in range(count) if r not in bad_rows and r + 2 not in ragged], np.int64)
    good = good[pick_samples(len(good), request)]
    if good.size == 0:
        raise DataError(f"{request.label}: no usable row")
    specs = {i.name: i for i in recipe.inputs}
    arrays = {n: v[good].reshape((len(good), *specs[n].shape[1:])) for n, v in values.items()}
    checks.append(Check(f"{request.role}.rows", True, f"{len(good)} of {count} rows used; label column {label_col!r}"))
    return RawData(arrays, labels[good] if labels is not None else None, checks)


def _input_columns(request: SourceRequest, header: list[str], label_col: str | None):  # noqa: ANN202
    recipe = request.recipe
    names = [i.name for i in recipe.inputs]
    contract = recipe.preprocessing
    given = contract.columns_of(names) if isinstance(contract, TabularPreprocessing) else {}
    if given:
        if set(given) != set(names):
            raise DataError(
                f"{request.label}: [preprocessing] names columns for {sorted(given)}, the inputs are {names}"
            )
        return given, []
    if len(names) != 1:
        raise DataError(
            f"{request.label}: with several inputs, [preprocessing].columns must map each input to its columns"
        )
    rest = [h for h in header if h != label_col]
    size = int(np.prod(recipe.inputs[0].shape[1:]))
    if len(rest) != size:
        raise DataError(
            f"{request.label}: {len(rest)} columns besides the labels, input {names[0]!r} takes {size} values",
            "list the input's columns in [preprocessing].feature_names",
        )
    note = Check(
        f"{request.role}.columns", True, f"no feature_names: every column but the labels, in file order: {rest}"
    )
    return {names[0]: rest}, [note]


def _numbers(
    request: SourceRequest, columns: dict[str, list], cols: list[str], problems: Problems, bad: set[int]
) -> np.ndarray:
    count = len(columns[cols[0]])
    out = np.zeros((count, len(cols)), np.float64)
    for j, col in enumerate(cols):
        for r, cell in enumerate(columns[col]):
            try:
                out[r, j] = float(cell)
            except (TypeError, ValueError):
                if r not in bad:
                    problems.add(f"{request.path}:{r + 2}", f"column {col!r} = {cell!r} is not a number")
                bad.add(r)
    return out


def _labels(request: SourceRequest, cells: list, problems: Problems, bad: set[int]) -> np.ndarray:
    recipe = request.recipe
    if recipe.model.task != "classification":
        return _numbers(request, {"label": cells}, ["label"], problems, bad)[:, 0]
    names = recipe.labels() or []
    index = {n: i for i, n in enumerate(names)}
    out = np.zeros(len(cells), np.int64)
    for r, cell in enumerate(cells):
        text = str(cell).strip() if cell is not None else ""
        if text in index:
            out[r] = index[text]
        elif text.lstrip("-").isdigit():
            out[r] = int(text)
        else:
            if r not in bad:
                problems.add(
                    f"{request.path}:{r + 2}", f"label {cell!r} is neither a class of [model].labels nor an index"
                )
            bad.add(r)
    return out
