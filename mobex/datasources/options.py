"""The `[data]` keys that say how folder and table data are read (the recipe's DataSection extends this)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DataSourceOptions(BaseModel):
    """Options shared by every data set of a recipe (validation, calibration, training)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Leave out files (or table rows) that cannot be decoded, instead of refusing the data; the report counts them.
    skip_bad_files: bool = False
    # At most this many samples per data set, drawn at random with `seed` (pictures, rows, audio windows).
    max_samples: int | None = Field(default=None, ge=1)
    seed: int = 0
    # Keep decoded folder/table data in the cache folder ($MOBEX_CACHE_DIR, else ~/.cache/mobex), keyed by the
    # files' names, sizes and modification times and by the preprocessing, so the next build does not decode again.
    cache: bool = True
    # Tables: the column holding the labels (class names or indices, or regression targets); default "label" if present.
    label_column: str | None = None
