"""All-or-nothing changes to the registry: stage every new file, write a journal, then rename.

A publish changes up to five files (the bundle, the pointer, index.json, and on a first publish
trust/1.root.json and trust/root.json). Each is first written in full to `.mobex-tmp/` and fsynced.
Writing the journal (`.mobex-journal.json`, atomically) is the commit point; the renames follow.
A process killed before the journal exists leaves the registry exactly as it was (only temporaries
in `.mobex-tmp/`, which the next writer deletes); one killed after it is rolled forward by the
next writer (`recover`, run under the registry lock before any change). Renames go bundle first,
pointer after, so even a reader that looks mid-way never sees a pointer to a missing bundle.

Callers hold the registry lock (`fsutil.locked`) around staging, commit and recovery.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from mobex.errors import VerificationError
from mobex.registry import fsutil, layout

NEW = "new"  # the final path must not exist (immutable files): hard link, never replace
REPLACE = "replace"  # os.replace over the old file (pointers, index, trust/root.json)


class Transaction:
    """Staged writes to one registry, applied together by `commit`."""

    def __init__(self, registry: Path) -> None:
        self.registry = Path(registry)
        self.tmp_dir = fsutil.ensure_dir(self.registry, layout.TMP_DIR)
        self.ops: list[tuple[str, str, str]] = []  # (temp rel, final rel, NEW|REPLACE)
        self.committed = False

    def stage(self, final_rel: str, data: bytes | Path, kind: str) -> None:
        """Write `data` (bytes or a file to copy) to a temporary file for `final_rel`."""
        if layout.classify(final_rel) is None:
            raise ValueError(f"{final_rel} is not a path of the registry layout")
        parent = final_rel.rsplit("/", 1)[0] if "/" in final_rel else ""
        if parent:
            fsutil.ensure_dir(self.registry, parent)
        tmp = fsutil.write_temp(self.tmp_dir, data, prefix=final_rel.rsplit("/", 1)[-1])
        self.ops.append((f"{layout.TMP_DIR}/{tmp.name}", final_rel, kind))

    def commit(self) -> None:
        """Write the journal (the commit point), apply every rename, remove the journal."""
        if not self.ops:
            return
        for _, final_rel, kind in self.ops:
            final = self.registry / final_rel
            fsutil.check_no_symlink(final)
            if kind == NEW and final.exists():
                raise FileExistsError(final_rel)
        journal = fsutil.write_temp(self.tmp_dir, json.dumps({"ops": self.ops}).encode(), prefix="journal")
        os.replace(journal, self.registry / layout.JOURNAL_FILE)  # the commit point
        self.committed = True  # from here on, only roll-forward: the temporaries belong to the journal
        _apply(self.registry, self.ops)
        (self.registry / layout.JOURNAL_FILE).unlink()
        fsutil.fsync_dir(self.registry)
        self.ops.clear()
        with contextlib.suppress(OSError):
            self.tmp_dir.rmdir()  # only if empty: another writer cannot be staging (we hold the lock)

    def abort(self) -> None:
        """Drop the staged temporaries of a transaction that did not reach its commit point."""
        if self.committed:
            return
        for tmp_rel, _, _ in self.ops:
            (self.registry / tmp_rel).unlink(missing_ok=True)
        self.ops.clear()
        with contextlib.suppress(OSError):
            self.tmp_dir.rmdir()


def recover(registry: Path) -> bool:
    """Finish a transaction interrupted after its commit point; drop stale temporaries. True if rolled forward."""
    registry = Path(registry)
    journal = registry / layout.JOURNAL_FILE
    rolled = False
    if journal.is_file() and not journal.is_symlink():
        try:
            ops = json.loads(journal.read_bytes())["ops"]
            ops = [(str(t), str(f), str(k)) for t, f, k in ops]
        except (ValueError, KeyError, TypeError) as exc:
            raise VerificationError(f"{journal} is corrupt ({exc}); inspect the registry by hand") from exc
        for tmp_rel, final_rel, kind in ops:
            if (
                not tmp_rel.startswith(layout.TMP_DIR + "/")
                or tmp_rel.count("/") != 1
                or ".." in tmp_rel
                or layout.classify(final_rel) is None
                or kind not in (NEW, REPLACE)
            ):
                raise VerificationError(f"{journal} names an unexpected path; inspect the registry by hand")
        _apply(registry, ops)
        journal.unlink()
        rolled = True
    tmp_dir = registry / layout.TMP_DIR
    if tmp_dir.is_dir() and not tmp_dir.is_symlink():
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return rolled


def _apply(registry: Path, ops: list[tuple[str, str, str]]) -> None:
    for tmp_rel, final_rel, kind in ops:
        tmp = registry / tmp_rel
        final = registry / final_rel
        if not tmp.exists():
            continue  # already applied (roll-forward after a crash mid-way)
        parent = final_rel.rsplit("/", 1)[0] if "/" in final_rel else ""
        if parent:
            fsutil.ensure_dir(registry, parent)
        if kind == NEW:
            try:
                os.link(tmp, final)
            except FileExistsError:
                pass  # linked before the crash; the journal proves it is ours
            tmp.unlink()
        else:
            os.replace(tmp, final)
        fsutil.fsync_dir(final.parent)
