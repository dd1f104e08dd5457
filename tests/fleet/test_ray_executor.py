"""`--executor ray` on a real Ray cluster started by the test on 127.0.0.1: a fleet of two recipes whose
export jobs and validations run as Ray tasks gives the same bundles as the local process pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mobex.bundle.keys import generate_keypair
from tests.bundle_contents import unsigned_contents
from tests.sample_recipes import reduced_sample

ray = pytest.importorskip("ray", reason="the optional 'ray' extra is not installed")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# Ray binds a single-node cluster (GCS, raylet, workers) to the loopback address with this switch off.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@pytest.fixture(scope="module")
def cluster():  # noqa: ANN201
    """A Ray cluster of this test process only (2 CPUs, no dashboard), shut down afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in LOOPBACK.items():
            mp.setenv(k, v)  # for the cluster's processes (they read it when they import ray)
        mp.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)  # this process imported ray already
        context = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            address = context.address_info["gcs_address"]
            assert address.startswith("127.0.0.1:"), address
            yield address, Path(context.address_info["session_dir"])
        finally:
            ray.shutdown()


def _recipes(folder: Path) -> Path:
    # int8-weights computes in float: which variant ships does not hang on a latency near-tie
    reduced_sample("tabular_mlp", folder, android=["fp32", "int8-weights"], ios=["fp16"])
    reduced_sample("digits_cnn", folder, android=["fp16"], ios=["fp32"])
    ws = folder / "fleet.toml"
    ws.write_text('[workspace]\nrecipes = ["*/recipe.toml"]\n')
    return ws


def _fleet(ws: Path, out: Path, key: Path, *extra: str) -> dict:
    env = {**os.environ, **LOOPBACK, "PYTHONPATH": str(ROOT), "SOURCE_DATE_EPOCH": "1234567890"}
    args = [sys.executable, "-m", "mobex", "build", str(ws), "--out", str(out), "--key", str(key), "--no-cache"]
    done = subprocess.run([*args, "--json", *extra], capture_output=True, text=True, env=env, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:] + "".join(
        p.read_text()[-3000:] for p in (out / "logs").glob("*.log")
    )
    return json.loads(done.stdout)


def _contents(out: Path) -> dict:
    return unsigned_contents(out.glob("*/*.zip"))


def _tasks_run(session: Path) -> list[str]:
    """Names of the tasks the cluster's workers ran (Ray marks each task's start in its worker's log)."""
    marks = []
    for log in (session / "logs").glob("worker-*.out"):
        marks += [line.split(":task_name:", 1)[1] for line in log.read_text().splitlines() if ":task_name:" in line]
    return marks


def test_ray_fleet_gives_the_bundles_of_a_local_fleet(cluster, tmp_path: Path) -> None:  # noqa: ANN001
    address, session = cluster
    ws = _recipes(tmp_path / "recipes")
    key, _ = generate_keypair(tmp_path / "key.pem")
    local = _fleet(ws, tmp_path / "local", key, "--workers", "2")
    assert _tasks_run(session) == []
    on_ray = _fleet(ws, tmp_path / "ray", key, "--workers", "2", "--executor", "ray", "--ray-address", address)
    assert [r["exit_code"] for r in on_ray["recipes"]] == [0, 0] and local["exit_code"] == 0
    a, b = _contents(tmp_path / "local"), _contents(tmp_path / "ray")
    assert len(a) == 4 and sorted(a) == sorted(b)
    for name in a:
        assert a[name] == b[name], f"{name} differs between the local pool and Ray"
    # The work really ran on the cluster: 2 export jobs (tflite, coreml) and 3 + 2 validations.
    names = _tasks_run(session)
    assert names.count("export_task") == 4 and names.count("validation_task") == 5, names


def _build(recipe: Path, out: Path, key: Path, *extra: str) -> dict:
    env = {**os.environ, **LOOPBACK, "PYTHONPATH": str(ROOT), "SOURCE_DATE_EPOCH": "1234567890"}
    args = [sys.executable, "-m", "mobex", "build", str(recipe), "--out", str(out), "--key", str(key), "--no-cache"]
    done = subprocess.run([*args, *extra], capture_output=True, text=True, env=env, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


def test_int8_search_candidates_run_as_ray_tasks_and_change_nothing(cluster, tmp_path: Path) -> None:  # noqa: ANN001
    """The wine MLP's int8 fails its gate in full int8, so the fallback search runs; on Ray its sensitivity
    candidates (one per op) are Ray tasks of their own, and the bundles are those of a local build."""
    address, session = cluster
    recipe = reduced_sample("tabular_mlp", tmp_path / "recipes", android=["int8"], ios=["fp16"])
    key, _ = generate_keypair(tmp_path / "key.pem")
    before = _tasks_run(session).count("candidate_task")
    local = _build(recipe, tmp_path / "local", key)
    on_ray = _build(recipe, tmp_path / "ray", key, "--executor", "ray", "--ray-address", address)

    def int8_details(report: dict) -> dict:
        return next(v for v in report["variants"] if v["id"] == "android/int8")["quantization_details"]

    here, there = int8_details(local), int8_details(on_ray)
    assert here["sensitivity_ran_on"] == "this process"
    candidates = len(there["sensitivity"])
    assert candidates >= 3 and there["sensitivity_ran_on"] == f"ray: {candidates} tasks"
    assert _tasks_run(session).count("candidate_task") - before == candidates
    assert here["sensitivity"] == there["sensitivity"] and here["fallback_layers"] == there["fallback_layers"]
    assert [layer["op"] for layer in there["fallback_layers"]] == ["SUB", "MUL"]
    a, b = unsigned_contents((tmp_path / "local").glob("*.zip")), unsigned_contents((tmp_path / "ray").glob("*.zip"))
    assert len(a) == 2 and a == b
