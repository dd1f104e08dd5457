"""`.npz` archives: one array per input, named after it, plus an optional `labels` array (no pickles)."""

from __future__ import annotations

import numpy as np

from mobex.datasources.base import Check, RawData, SourceRequest
from mobex.errors import DataError

LABELS_KEY = "labels"


class NpzArchive:
    name = "npz"

    def claims(self, request: SourceRequest) -> bool:
        return request.path.is_file() and request.path.suffix.lower() == ".npz"

    def read(self, request: SourceRequest) -> RawData:
        full = request.path
        try:
            with np.load(full, allow_pickle=False) as npz:
                raw = {key: npz[key] for key in npz.files}
        except ValueError as exc:
            raise DataError(
                f"{request.label}: {full} needs pickled objects, which mobex refuses to load: {exc}"
            ) from None
        except Exception as exc:
            raise DataError(f"{request.label}: {full} is not a readable .npz archive: {exc}") from None
        found = sorted(raw)
        labels = raw.pop(LABELS_KEY, None)
        names = {i.name for i in request.recipe.inputs}
        checks = []
        unknown = sorted(set(raw) - names)
        if unknown:
            checks.append(
                Check(f"{request.role}.extra_arrays", True, f"ignored arrays not named after an input: {unknown}")
            )
        return RawData({k: v for k, v in raw.items() if k in names}, labels, checks, found=found)
