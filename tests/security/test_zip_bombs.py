"""Issue 12 item 7: zip bombs made of many members, and error messages that stay short.

The crafted zips are real deflated archives written here: 300 members of 1 MiB of zeros each (about
1 KiB each compressed), so no single member is over the per-member ratio threshold. Extraction runs
in a child process so its own peak memory (VmHWM, Linux) can be read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mobex.bundle.archive import safe_extract
from mobex.bundle.verify import read_manifest, verify_bundle
from mobex.errors import VerificationError
from tests.conftest import ROOT

MiB = 1 << 20


def _many_zero_members(path: Path, count: int, size: int = MiB) -> Path:
    zeros = bytes(size)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for i in range(count):
            zf.writestr(f"assets/part-{i:05d}.bin", zeros)
    return path


def _disk_usage(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


EXTRACT_AND_MEASURE = """
import json, sys
from pathlib import Path
from mobex.bundle.archive import safe_extract
from mobex.errors import VerificationError
try:
    safe_extract(Path(sys.argv[1]), Path(sys.argv[2]))
    outcome = "extracted"
except VerificationError as exc:
    outcome = str(exc)
# VmHWM: this process's own peak RSS (ru_maxrss would include the parent's from before exec)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"outcome": outcome, "peak_rss_kib": peak}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from Linux /proc")
def test_many_small_members_of_zeros_are_refused_before_extracting(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    bomb = _many_zero_members(work / "bomb.zip", 300)
    assert bomb.stat().st_size < 2 * MiB  # 300 MiB declared
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", EXTRACT_AND_MEASURE, str(bomb), str(work / "dest")],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "overall" in result["outcome"] and "looks like a zip bomb" in result["outcome"], result
    assert not (work / "dest").exists()
    assert sorted(p.name for p in work.iterdir()) == ["bomb.zip"]  # no half-extracted temporary folder
    assert _disk_usage(work) == bomb.stat().st_size
    assert result["peak_rss_kib"] < 150 * 1024  # the interpreter and mobex's imports; nothing like 300 MiB of data


def test_the_same_data_in_a_plausible_ratio_still_extracts(tmp_path: Path) -> None:
    """The overall check is a ratio, not a size cap: 3 MiB of pseudo-random data deflated ~1x is fine."""
    path = tmp_path / "ok.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(3):
            zf.writestr(f"model/part{i}.bin", os.urandom(MiB))
    assert safe_extract(path, tmp_path / "dest") == ["model/part0.bin", "model/part1.bin", "model/part2.bin"]


def test_entry_count_is_refused_from_the_end_record(tmp_path: Path) -> None:
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(10_001):
            zf.writestr(f"a/{i}", b"")
    for call in (lambda: safe_extract(path, tmp_path / "dest"), lambda: read_manifest(path)):
        with pytest.raises(VerificationError, match="declares 10001 entries, more than the limit of 10000"):
            call()


def test_messages_about_thousands_of_members_stay_short(signed_bundle, rewrite_zip, keypair, tmp_path: Path) -> None:
    added = tuple((f"assets/extra-{i:05d}-{'x' * 100}.txt", b"") for i in range(5000))
    crafted = rewrite_zip(signed_bundle(), tmp_path / "crafted.zip", add=added)
    with pytest.raises(VerificationError) as info:
        verify_bundle(crafted, keypair[1])
    message = str(info.value)
    assert "not signed (added after signing)" in message and "... and 4990 more" in message
    assert len(message) < 3000


def test_a_long_member_name_is_cut_in_messages(tmp_path: Path) -> None:
    path = tmp_path / "long.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("../" + "a" * 60_000, b"x")
    with pytest.raises(VerificationError) as info:
        safe_extract(path, tmp_path / "dest")
    assert len(str(info.value)) < 1000 and "characters)" in str(info.value)
