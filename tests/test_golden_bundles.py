"""Golden bundles: each sample built from its committed recipe gives exactly the recorded bundle entries.

The bundles of a sample are a function of its recipe, data and the pinned toolchain (README "Bundles"). This
test rebuilds them as scripts/update_golden_bundles.py does and compares every entry's SHA-256 with
tests/golden/bundles.json (signatures are randomized and left out). It catches a change that alters what
ships without meaning to, such as the targets/variants redesign, which had to leave every byte as it was.
An intended change (a new manifest field, another converter version) re-records the file with that script.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "update_golden_bundles.py"


def _script():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("update_golden_bundles", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


GOLDEN = _script()


@pytest.mark.parametrize(
    "sample", [pytest.param(s, marks=[pytest.mark.slow] if s != "tabular_mlp" else []) for s in GOLDEN.GOLDEN]
)
def test_sample_bundles_are_the_recorded_bytes(sample: str, tmp_path: Path) -> None:
    recorded = json.loads(GOLDEN.GOLDEN_FILE.read_text())[sample]
    actual = GOLDEN.bundle_hashes(sample, tmp_path)
    assert sorted(actual) == sorted(recorded)
    for bundle, entries in recorded.items():
        changed = sorted(e for e in set(entries) | set(actual[bundle]) if entries.get(e) != actual[bundle].get(e))
        assert not changed, (
            f"{bundle}: {changed} differ from tests/golden/bundles.json; if the change is intended, run "
            "`python scripts/update_golden_bundles.py` and commit the file (say why in the commit message)"
        )
