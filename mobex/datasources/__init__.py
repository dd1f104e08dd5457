"""Data as app developers hold it: .npz archives, folders of pictures or sounds, CSV and Parquet tables.

`read_source` picks the first registered source that claims the path and returns `RawData`, which
mobex.data checks and turns into the same `Dataset` whatever the source. Sources that decode files
(pictures, sounds, tables) go through the cache (mobex.datasources.cache). A new source is one class
with `claims` and `read` (or `inventory` and `decode`) added with `register`.
"""

from __future__ import annotations

from mobex.datasources.audio import AudioFolder
from mobex.datasources.base import Check, DataSource, DecodingSource, RawData, SourceRequest, whole_batches
from mobex.datasources.cache import read_cached
from mobex.datasources.images import ImageFolder
from mobex.datasources.npz import NpzArchive
from mobex.datasources.tables import CsvTable, ParquetTable
from mobex.errors import DataError

SOURCES: list[DataSource | DecodingSource] = [NpzArchive(), CsvTable(), ParquetTable(), ImageFolder(), AudioFolder()]

__all__ = ["SOURCES", "Check", "RawData", "SourceRequest", "read_source", "register"]


def register(source: DataSource | DecodingSource) -> None:
    """Add a source; it is asked after the built-in ones."""
    SOURCES.append(source)


def read_source(request: SourceRequest) -> RawData:
    """The data at `request.path`, read by the first source that claims it (DataError when none does)."""
    for source in SOURCES:
        if source.claims(request):
            if hasattr(source, "decode"):
                raw = read_cached(source, request)
                return whole_batches(raw, request.recipe.inputs[0].shape[0], request.role)
            return source.read(request)
    raise DataError(
        f"{request.label}: mobex cannot read {request.path}",
        _what_it_reads(request),
    )


def _what_it_reads(request: SourceRequest) -> str:
    kind = getattr(request.recipe.preprocessing, "kind", "none")
    folder = {
        "image": "a folder of .jpg/.png/.webp pictures (one subfolder per class, or flat)",
        "audio": "a folder of .wav/.flac clips (one subfolder per class, or flat)",
    }.get(kind, 'a folder of pictures or sounds with [preprocessing] kind = "image" or "audio"')
    return f"give an .npz archive, a .csv/.tsv or .parquet table, or {folder}"
