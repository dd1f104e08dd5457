"""The build cache end to end on a small real sample: a cached rebuild writes the same bundles as an uncached
build (same SOURCE_DATE_EPOCH), loads no model and starts no export worker; concurrent builds share the
cache; a corrupted entry is rebuilt, never used; a changed recipe rebuilds only what it changes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mobex.cache.store import CacheStore
from mobex.executor import LocalExecutor
from mobex.pipeline import BuildOptions, build
from mobex.recipe import load_recipe
from tests.bundle_contents import unsigned_contents
from tests.sample_recipes import reduced_sample

pytestmark = pytest.mark.slow
EPOCH = "1234567890"
ROOT = Path(__file__).resolve().parents[2]


class CountingExecutor(LocalExecutor):
    """The local executor, counting the export jobs and validations the cache passed on to it."""

    def __init__(self) -> None:
        self.jobs: list[str] = []
        self.validated: list[str] = []

    def run_exports(self, jobs, parallel):  # noqa: ANN001, ANN201
        self.jobs.extend(f"{j.target}:{r.name}" for j in jobs for r in j.requests)
        return super().run_exports(jobs, parallel)

    def validate(self, tasks, plan, data, reference):  # noqa: ANN001, ANN201
        self.validated.extend(f"{t.built.request.platform}/{t.built.request.spelled}" for t in tasks)
        return super().validate(tasks, plan, data, reference)


def _cli(*args: str, cache: Path, key: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MOBEX_CACHE_DIR": str(cache), "SOURCE_DATE_EPOCH": EPOCH}
    return subprocess.Popen(
        [sys.executable, "-m", "mobex", "build", *args, "--key", str(key), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _done(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]


def _bundles(out: Path) -> dict[str, dict[str, tuple]]:
    return unsigned_contents(out.glob("*.zip"))  # ECDSA signatures are randomized; everything signed is compared


def _same_bundles(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b) and len(a) == 2
    for name in a:
        assert sorted(a[name]) == sorted(b[name])
        for entry in a[name]:
            assert a[name][entry] == b[name][entry], f"{name}: {entry} differs"


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An uncached CLI build, two concurrent cold CLI builds sharing one cache, and a warm in-process build."""
    from mobex.bundle.keys import generate_keypair

    tmp = tmp_path_factory.mktemp("cachebuild")
    # int8-weights computes in float: which variant ships does not hang on a latency near-tie
    recipe = reduced_sample("tabular_mlp", tmp, android=["fp32", "int8-weights"], ios=["fp16"])
    key, _ = generate_keypair(tmp / "key.pem")
    cache = tmp / "cache"
    _done(_cli(str(recipe), "--out", str(tmp / "uncached"), "--no-cache", cache=cache, key=key))
    assert not (cache / "builds").exists(), "--no-cache stores nothing"
    first = _cli(str(recipe), "--out", str(tmp / "cold1"), cache=cache, key=key)
    second = _cli(str(recipe), "--out", str(tmp / "cold2"), cache=cache, key=key)
    _done(first)
    _done(second)
    warm, executor = _in_process(recipe, tmp / "warm", key, cache)
    return {"tmp": tmp, "recipe": recipe, "cache": cache, "key": key, "warm": warm, "executor": executor}


def _in_process(recipe: Path, out: Path, key: Path, cache: Path):  # noqa: ANN202
    """`build()` here, with the given cache folder, counting what reaches the executor."""
    executor = CountingExecutor()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOBEX_CACHE_DIR", str(cache))
        options = BuildOptions(out_dir=out, key=key, source_date_epoch=int(EPOCH), executor=executor)
        return build(load_recipe(recipe), options), executor


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_cached_rebuild_writes_the_bundles_of_an_uncached_build(builds: dict) -> None:
    tmp = builds["tmp"]
    uncached = _bundles(tmp / "uncached")
    _same_bundles(uncached, _bundles(tmp / "warm"))
    _same_bundles(uncached, _bundles(tmp / "cold1"))
    _same_bundles(uncached, _bundles(tmp / "cold2"))
    done = subprocess.run(
        [sys.executable, "-m", "mobex", "verify", str(next((tmp / "warm").glob("*-android.zip"))), "--key",
         str(builds["key"]).replace(".pem", ".pub.pem")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_warm_build_reuses_everything_and_says_so(builds: dict) -> None:
    report = builds["warm"].report
    assert report["reference"]["cache"] == "hit"
    assert "load model" not in report["timings"], "a cached reference run needs no model"
    assert builds["executor"].jobs == [], "no export worker starts when every variant is cached"
    assert builds["executor"].validated == []
    for v in report["variants"]:
        latency = "reused" if v["platform"] == "android" else None  # Core ML latency is not measured on Linux
        assert v["cache"] == {"export": "hit", "validation": "hit", "latency": latency}, v["id"]
    uncached = _report(builds["tmp"] / "uncached")
    assert uncached["reference"]["cache"] == "off"
    assert {json.dumps(v["cache"], sort_keys=True) for v in uncached["variants"]} == {
        json.dumps({"export": "off", "latency": lat, "validation": "off"}, sort_keys=True) for lat in ("measured", None)
    }
    for name in ("cold1", "cold2"):  # concurrent: each variant was built by one or both of them, never broken
        for v in _report(builds["tmp"] / name)["variants"]:
            assert v["cache"]["export"] in ("hit", "miss") and "note" not in v["cache"]


def _payload(entry) -> dict:  # noqa: ANN001
    return json.loads((entry.path / "meta.json").read_text())["payload"]


def test_a_corrupted_entry_is_rebuilt_and_never_used(builds: dict) -> None:
    store = CacheStore(builds["cache"])
    exports = [e for e in store.entries() if e.kind == "export"]
    victim = next(e for e in exports if _payload(e)["quantization"] == "int8-weights")
    model = next((victim.path / "files" / "model").iterdir())
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    result, executor = _in_process(builds["recipe"], builds["tmp"] / "repaired", builds["key"], builds["cache"])
    assert executor.jobs == ["tflite:int8-weights"], "only the corrupted variant is rebuilt"
    by_id = {v["id"]: v["cache"] for v in result.report["variants"]}
    assert by_id["android/int8-weights"]["export"] == "miss"
    assert "hash check" in by_id["android/int8-weights"]["note"]
    assert by_id["android/fp32"]["export"] == "hit" and by_id["ios/fp16"]["export"] == "hit"
    _same_bundles(_bundles(builds["tmp"] / "uncached"), _bundles(builds["tmp"] / "repaired"))
    assert store.get("export", victim.key) is not None, "the rebuilt entry is intact again"


def test_a_changed_recipe_rebuilds_only_what_it_changes(builds: dict) -> None:
    recipe = builds["recipe"]
    changed = recipe.parent / "recipe-more.toml"
    text = recipe.read_text().replace('["fp32", "int8-weights"]', '["fp32", "int8-weights", "fp16"]')
    changed.write_text(text)
    result, executor = _in_process(changed, builds["tmp"] / "more", builds["key"], builds["cache"])
    # The TFLite options are unchanged (the new variant only joins the list): the others are reused. Core ML's
    # options carry the recipe file's hash (it is written into the model's metadata), so they are rebuilt.
    assert sorted(executor.jobs) == ["coreml:fp16", "tflite:fp16"]
    assert {v["id"]: v["cache"]["export"] for v in result.report["variants"]} == {
        "android/fp32": "hit", "android/int8-weights": "hit", "android/fp16": "miss", "ios/fp16": "miss",
    }  # fmt: skip


def test_cache_info_and_prune_commands(builds: dict, tmp_path: Path) -> None:
    cache = tmp_path / "copy"
    shutil.copytree(builds["cache"], cache)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MOBEX_CACHE_DIR": str(cache)}

    def mobex(*args: str) -> dict:
        command = [sys.executable, "-m", "mobex", "cache", *args, "--json"]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    info = mobex("info")
    assert info["path"] == str(cache) and info["kinds"]["export"]["entries"] >= 3
    assert info["kinds"]["validation"]["entries"] >= 3 and info["kinds"]["reference"]["entries"] >= 1
    pruned = mobex("prune", "--max-size", "0")
    assert pruned["removed"] == info["entries"] and pruned["size_bytes"] == 0
    assert mobex("info")["entries"] == 0
    command = [sys.executable, "-m", "mobex", "cache", "prune", "--max-size", "huge"]
    bad = subprocess.run(command, capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "not a size" in bad.stderr
