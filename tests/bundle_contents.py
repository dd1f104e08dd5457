"""What two builds' bundles are compared on: every entry but the signature (ECDSA signatures are randomized)."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from pathlib import Path

SIGNATURE = "signature.sigstore.json"


def unsigned_contents(bundles: Iterable[Path]) -> dict[str, dict[str, tuple]]:
    """Bundle file name -> entry name -> (bytes, timestamp, attributes), for every entry but the signature."""
    found = {}
    for path in sorted(bundles):
        with zipfile.ZipFile(path) as zf:
            found[path.name] = {
                i.filename: (zf.read(i), i.date_time, i.external_attr) for i in zf.infolist() if i.filename != SIGNATURE
            }
    return found
