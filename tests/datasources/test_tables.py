"""Tables: CSV (csv module) and Parquet (pyarrow): named columns to inputs, a label column, bad rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mobex.data import load_dataset
from mobex.errors import DataError
from mobex.recipe import load_recipe
from tests.datasources.conftest import write_wine_csv


def tabular_recipe(names: list[str], table: str = "wine.csv", extra: str = "") -> str:
    return f"""
[model]
name = "wine"
version = "1.0.0"
source = "model:build_mlp"
task = "classification"
labels = "labels.txt"

[[inputs]]
name = "features"
shape = [1, 13]

[preprocessing]
kind = "tabular"
feature_names = {names!r}

[data]
validation = "{table}"
{extra}
[android]
variants = ["fp32"]
""".replace("'", '"')


def test_csv_columns_by_name_and_labels_by_class_name(project, tmp_path: Path) -> None:
    from sklearn.datasets import load_wine

    _, names, classes = write_wine_csv(tmp_path / "wine.csv")
    recipe = load_recipe(project(tabular_recipe(names[::-1]), classes))  # columns in another order than the file
    data = load_dataset(recipe, "validation", recipe.data.validation)
    wine = load_wine()
    np.testing.assert_allclose(data.arrays["features"], wine.data[:, ::-1].astype(np.float32))
    assert data.labels.tolist() == wine.target.tolist()


def test_parquet_reads_like_csv(project, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, names, classes = write_wine_csv(tmp_path / "wine.csv")
    csv_recipe = load_recipe(project(tabular_recipe(names), classes))
    expected = load_dataset(csv_recipe, "validation", csv_recipe.data.validation)
    import csv

    with open(tmp_path / "wine.csv") as f:
        rows = list(csv.DictReader(f))
    table = pa.table({n: [float(r[n]) for r in rows] for n in names} | {"label": [r["label"] for r in rows]})
    pq.write_table(table, tmp_path / "wine.parquet")
    recipe = load_recipe(project(tabular_recipe(names, "wine.parquet"), classes))
    data = load_dataset(recipe, "validation", recipe.data.validation)
    np.testing.assert_array_equal(data.arrays["features"], expected.arrays["features"])
    np.testing.assert_array_equal(data.labels, expected.labels)


def test_missing_column_and_bad_cells(project, tmp_path: Path) -> None:
    path, names, classes = write_wine_csv(tmp_path / "wine.csv")
    recipe = load_recipe(project(tabular_recipe([*names[:-1], "colour"]), classes))
    with pytest.raises(DataError, match=r"missing column\(s\) 'colour'"):
        load_dataset(recipe, "validation", recipe.data.validation)
    lines = path.read_text().splitlines()
    lines[5] = lines[5].replace(lines[5].split(",")[2], "n/a", 1)
    path.write_text("\n".join(lines) + "\n")
    recipe = load_recipe(project(tabular_recipe(names), classes))
    with pytest.raises(DataError, match=rf"{path}:6: column '{names[2]}' = 'n/a' is not a number"):
        load_dataset(recipe, "validation", recipe.data.validation)
    recipe = load_recipe(project(tabular_recipe(names, extra="skip_bad_files = true"), classes))
    data = load_dataset(recipe, "validation", recipe.data.validation)
    assert data.num_samples == 177
    assert any(c.name == "validation.bad_rows" and c.detail.startswith("1 bad rows left out") for c in data.checks)
