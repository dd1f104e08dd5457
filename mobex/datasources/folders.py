"""Folders of files: one subfolder per class (the folder name is the label), or a flat folder without labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobex.datasources.base import Check, SourceRequest
from mobex.errors import DataError
from mobex.preprocessing import PreprocessingContract

MAX_FILES = 1_000_000  # a bound on what one data set may list


def media_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files with one of `suffixes` (case-insensitive) directly in `folder` or in its class subfolders, sorted.

    Hidden files and folders (".DS_Store", ".git") are ignored; symlinks are not followed.
    """
    found: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.is_symlink():
            continue
        if entry.is_dir():
            found.extend(
                p
                for p in sorted(entry.iterdir())
                if p.is_file() and not p.is_symlink() and not p.name.startswith(".") and p.suffix.lower() in suffixes
            )
        elif entry.is_file() and entry.suffix.lower() in suffixes:
            found.append(entry)
        if len(found) > MAX_FILES:
            raise DataError(f"{folder}: more than {MAX_FILES} files; point [data] at a smaller folder")
    return found


def has_media(folder: Path, suffixes: tuple[str, ...]) -> bool:
    return folder.is_dir() and bool(media_files(folder, suffixes))


def class_labels(request: SourceRequest, files: list[Path]) -> tuple[np.ndarray | None, list[Check]]:
    """Label indices from the class subfolders, matched by name to `[model].labels`.

    A flat folder has no labels. Without a labels file the sorted folder names are the classes.
    """
    top = request.path
    nested = [f.parent.name for f in files if f.parent != top]
    if not nested:
        return None, [Check(f"{request.role}.labels", True, "flat folder: no labels")]
    if len(nested) != len(files):
        loose = next(f for f in files if f.parent == top)
        raise DataError(
            f"{request.label}: {loose.name} lies next to the class folders",
            "put every file in a class folder (its name is the label), or use a flat folder without classes",
        )
    names = request.recipe.labels()
    classes = names if names is not None else sorted(set(nested))
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(nested) - set(index))
    if unknown:
        raise DataError(
            f"{request.label}: class folder(s) {', '.join(map(repr, unknown))} are not in the labels file "
            f"({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})",
            "name each class folder exactly like a line of [model].labels, or add the class to the labels file",
        )
    source = "[model].labels" if names is not None else "the sorted folder names (no [model].labels)"
    counts = {c: nested.count(c) for c in sorted(set(nested), key=index.__getitem__)}
    detail = f"{len(counts)} classes from {source}: " + ", ".join(f"{c} ({n})" for c, n in counts.items())
    return np.array([index[c] for c in nested], np.int64), [Check(f"{request.role}.classes", True, detail)]


class MediaFolder:
    """A folder of media files for the contract kind `contract`: claims it, lists it (subclasses decode)."""

    suffixes: tuple[str, ...] = ()
    contract: type[PreprocessingContract] = PreprocessingContract

    def claims(self, request: SourceRequest) -> bool:
        return isinstance(request.recipe.preprocessing, self.contract) and has_media(request.path, self.suffixes)

    def inventory(self, request: SourceRequest) -> list[Path]:
        return media_files(request.path, self.suffixes)
