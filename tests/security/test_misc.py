"""Issue 12 item 9: the smaller holes. `--out` under a file, constant validation data, .npz files that
expand without bound or are not .npz at all, private keys others can read, and `inspect --json`
saying whether the manifest was verified."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mobex.bundle.keys import generate_keypair, load_private_key
from mobex.data import load_dataset
from mobex.datasources.npz import MAX_DATA_BYTES_ENV, read_npz
from mobex.errors import DataError
from mobex.recipe import load_recipe
from tests.conftest import ROOT
from tests.security.conftest import run_mobex, tabular_recipe

MiB = 1 << 20


@pytest.mark.parametrize("kind", ["file", "under-a-file", "broken-symlink"])
def test_out_that_cannot_be_a_folder_is_refused_before_any_work(sample_copy, tmp_path: Path, kind: str) -> None:
    recipe = tabular_recipe(sample_copy("tabular_mlp"), android=["fp32"])
    blocker = tmp_path / "a_file"
    if kind == "broken-symlink":
        blocker.symlink_to(tmp_path / "nowhere")
    else:
        blocker.write_text("not a folder")
    out = blocker if kind == "file" else blocker / "sub"
    start = time.monotonic()
    run = run_mobex("build", str(recipe), "--out", str(out), "--json")
    assert run.code == 2, run.stderr
    assert "--out" in run.stderr and "Traceback" not in run.stderr
    assert "reference run" not in run.stderr and time.monotonic() - start < 60


# --------------------------------------------------------------------------- constant data


def _two_input_recipe(folder: Path) -> Path:
    """A recipe with two inputs (features and a mask), enough for the data checks (no model is loaded)."""
    (folder / "data").mkdir(parents=True)
    recipe = folder / "recipe.toml"
    recipe.write_text(
        '[model]\nname = "two"\nversion = "1.0.0"\nsource = "model:build"\n\n'
        '[[inputs]]\nname = "x"\nshape = [1, 4]\n\n[[inputs]]\nname = "mask"\nshape = [1, 4]\n\n'
        '[data]\nvalidation = "data/val.npz"\ncalibration = "data/calib.npz"\n\n[android]\nvariants = ["fp32"]\n'
    )
    return recipe


def test_validation_data_whose_every_input_is_constant_is_refused(sample_copy) -> None:
    folder = sample_copy("digits_cnn")
    np.savez(folder / "data" / "val.npz", image=np.ones((8, 1, 8, 8), np.float32), labels=np.arange(8))
    recipe = load_recipe(folder / "recipe.toml")
    with pytest.raises(DataError, match="every input is constant \\('image'\\)"):
        load_dataset(recipe, "validation", recipe.data.validation)


def test_a_constant_mask_beside_varying_inputs_and_constant_calibration_are_warnings(tmp_path: Path) -> None:
    recipe_path = _two_input_recipe(tmp_path / "two")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    np.savez(tmp_path / "two" / "data" / "val.npz", x=x, mask=np.ones((16, 4), np.float32))
    np.savez(
        tmp_path / "two" / "data" / "calib.npz", x=np.zeros((16, 4), np.float32), mask=np.ones((16, 4), np.float32)
    )
    recipe = load_recipe(recipe_path)
    validation = load_dataset(recipe, "validation", recipe.data.validation)
    assert [c.name for c in validation.checks if not c.passed] == ["validation.mask.varies"]
    calibration = load_dataset(recipe, "calibration", recipe.data.calibration)
    assert [c.name for c in calibration.checks if not c.passed] == ["calibration.x.varies", "calibration.mask.varies"]


# --------------------------------------------------------------------------- .npz files


def _zeros_npz(path: Path, rows: int) -> Path:
    """A genuine savez_compressed file of zeros: tiny on disk, `rows` x 13 float64 in memory."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("features.npy", "w", force_zip64=True) as member:
            header = {"descr": "<f8", "fortran_order": False, "shape": (rows, 13)}
            np.lib.format.write_array_header_1_0(member, header)
            chunk = bytes(16 * MiB)
            left = rows * 13 * 8
            while left:
                member.write(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))
    return path


LOAD_AND_MEASURE = """
import json, sys
from pathlib import Path
from mobex.datasources.npz import read_npz
from mobex.errors import DataError
try:
    arrays = read_npz(Path(sys.argv[1]), "[data].validation")
    outcome = "loaded %d values" % sum(a.size for a in arrays.values())
except DataError as exc:
    outcome = str(exc)
# VmHWM: this process's own peak RSS (ru_maxrss would include the parent's from before exec)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"outcome": outcome, "peak_rss_kib": peak}))
"""


def _load_in_child(path: Path, cap: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), MAX_DATA_BYTES_ENV: str(cap)}
    done = subprocess.run([sys.executable, "-c", LOAD_AND_MEASURE, str(path)], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from Linux /proc")
def test_an_npz_that_expands_past_the_cap_is_refused_without_allocating(tmp_path: Path) -> None:
    rows = 2_600_000  # 270 MB of float64 zeros, about 1.2 MB compressed
    bomb = _zeros_npz(tmp_path / "bomb.npz", rows)
    assert bomb.stat().st_size < 3 * MiB
    small = _zeros_npz(tmp_path / "small.npz", 1000)
    cap = 64 * MiB
    refused = _load_in_child(bomb, cap)
    baseline = _load_in_child(small, cap)
    assert "declares 270400000 bytes of arrays, more than the 67108864 allowed" in refused["outcome"], refused
    assert baseline["outcome"] == "loaded 13000 values"
    assert refused["peak_rss_kib"] - baseline["peak_rss_kib"] < 32 * 1024  # the 270 MB array was never allocated


def test_the_cap_has_a_default_and_can_be_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ok.npz"
    np.savez(path, features=np.zeros((100, 13), np.float32))
    monkeypatch.setenv(MAX_DATA_BYTES_ENV, "1000")
    with pytest.raises(DataError, match=f"(?s)more than the 1000 allowed.*{MAX_DATA_BYTES_ENV}"):
        read_npz(path, "x")
    monkeypatch.delenv(MAX_DATA_BYTES_ENV)
    assert read_npz(path, "x")["features"].shape == (100, 13)


def test_a_header_that_declares_more_than_the_member_holds_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lying.npz"
    with zipfile.ZipFile(path, "w") as zf, zf.open("features.npy", "w") as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": (10**9, 13)})
        member.write(bytes(64))
    with pytest.raises(DataError, match="declares more data than it holds"):
        read_npz(path, "x")


@pytest.mark.parametrize(
    "content", [b"alcohol,ash\n13.2,2.1\n", b"\x93NUMPY\x01\x00", b""], ids=["csv", "npy", "empty"]
)
def test_a_file_that_is_not_npz_says_so(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "val.npz"
    path.write_bytes(content)
    with pytest.raises(DataError, match="is not a .npz archive") as info:
        read_npz(path, "[data].validation")
    assert "pickled" not in str(info.value) and "numpy.savez" in str(info.value)


def test_object_arrays_are_named_as_pickles(tmp_path: Path) -> None:
    path = tmp_path / "val.npz"
    np.savez(path, features=np.array([object()], dtype=object))
    with pytest.raises(DataError, match="holds pickled objects \\(dtype object\\)"):
        read_npz(path, "x")


def test_drift_reads_new_data_through_the_same_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mobex.validate.drift import load_new_data

    inputs = [{"name": "features", "shape": [1, 13], "dtype": "float32"}]
    csv = tmp_path / "new.npz"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="is not a .npz archive"):
        load_new_data(csv, inputs)
    big = tmp_path / "big.npz"
    np.savez(big, features=np.zeros((1000, 13), np.float32))
    monkeypatch.setenv(MAX_DATA_BYTES_ENV, "1000")
    with pytest.raises(DataError, match="more than the 1000 allowed"):
        load_new_data(big, inputs)


# --------------------------------------------------------------------------- keys and inspect


def test_a_private_key_others_can_read_gets_a_warning(tmp_path: Path, capfd) -> None:
    private, _ = generate_keypair(tmp_path / "release.pem")
    load_private_key(private)
    assert "warning" not in capfd.readouterr().err
    private.chmod(0o644)
    load_private_key(private)
    load_private_key(private)
    err = capfd.readouterr().err
    assert err.count("warning: private key") == 1  # once per file, as ssh does
    assert "mode 0644" in err and f"chmod 600 {private}" in err


def test_signing_with_an_exposed_key_warns_from_the_cli(signed_bundle, tmp_path: Path) -> None:
    private, _ = generate_keypair(tmp_path / "ci.pem")
    private.chmod(0o640)
    run = run_mobex("sign", str(signed_bundle()), "--key", str(private), "--out", str(tmp_path / "resigned.zip"))
    assert run.code == 0, run.stderr
    assert "accessible by group or others (mode 0640)" in run.stderr


def test_inspect_json_says_whether_the_manifest_was_verified(signed_bundle, keypair, rewrite_zip, tmp_path: Path):
    bundle = signed_bundle()
    plain = json.loads(run_mobex("inspect", str(bundle), "--json").stdout)
    assert plain["verified"] is False and "NOT verified" in plain["verification"] and plain["name"] == "digits"
    checked = run_mobex("inspect", str(bundle), "--json", "--key", str(keypair[1]))
    assert checked.code == 0 and json.loads(checked.stdout)["verified"] is True
    tampered = rewrite_zip(bundle, tmp_path / "t.zip", change={"assets/labels.txt": lambda b: b + b"extra\n"})
    refused = run_mobex("inspect", str(tampered), "--json", "--key", str(keypair[1]))
    assert refused.code == 5 and refused.stdout == ""
