"""Issue 12 item 6: a build killed with SIGKILL leaves no export worker running, and the next build in
the same `--out` removes the dead build's work folder.

All with real processes: a real `mobex build` killed with `kill -9` once its export workers run, and
for the fast tests a real spawn-context process pool and real lock holders in other processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mobex import workdir
from tests.conftest import ROOT
from tests.security.conftest import run_mobex, tabular_recipe

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from Linux /proc")


def _alive(pid: int) -> bool:
    """Running (a zombie left for a non-reaping init counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _spawn_workers(pid: int) -> list[int]:
    """The pool's worker processes among `pid`'s children (not multiprocessing's resource tracker)."""
    workers = []
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"multiprocessing.spawn" in cmdline or b"spawn_main" in cmdline:
            workers.append(child)
    return workers


def _wait(predicate, timeout: float, step: float = 0.1) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


POOL_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from mobex.workers import pool_options

    def work(_):
        time.sleep(120)

    if __name__ == "__main__":
        options = pool_options() if sys.argv[1] == "guarded" else {}
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=2, mp_context=ctx, **options) as pool:
            futures = [pool.submit(work, i) for i in range(2)]
            print("started", flush=True)
            time.sleep(120)
    """
)


def _kill_pool_parent(tmp_path: Path, mode: str) -> list[int]:
    script = tmp_path / "pool.py"
    script.write_text(POOL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert parent.stdout.readline().strip() == "started"
        assert _wait(lambda: len(_spawn_workers(parent.pid)) == 2, 30)
        workers = _spawn_workers(parent.pid)
        time.sleep(1.0)  # let the workers finish their initializer
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        _wait(lambda: not any(_alive(w) for w in workers), 5)
        return [w for w in workers if _alive(w)]
    finally:
        parent.kill()


def test_pool_workers_die_with_their_killed_parent(tmp_path: Path) -> None:
    assert _kill_pool_parent(tmp_path, "guarded") == []


def test_control_without_the_guard_workers_outlive_the_parent(tmp_path: Path) -> None:
    survivors = _kill_pool_parent(tmp_path, "plain")
    try:
        assert survivors, "unguarded workers died on their own: the test above would not show anything"
    finally:
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)


LOCK_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mobex import workdir
    folder = workdir.create(Path(sys.argv[1]))
    print(folder, flush=True)
    if sys.argv[2] == "hold":
        time.sleep(120)
    """
)


def test_stale_folders_of_dead_builds_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = tmp_path / "holder.py"
    script.write_text(LOCK_HOLDER)
    live = subprocess.Popen([sys.executable, str(script), str(out), "hold"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        live_folder = Path(live.stdout.readline().strip())
        dead = subprocess.run([sys.executable, str(script), str(out), "exit"], capture_output=True, text=True, env=env)
        dead_folder = Path(dead.stdout.strip())  # its process exited without removing the folder
        (dead_folder / "android").mkdir()
        (dead_folder / "android" / "half-written.tflite").write_bytes(b"x" * 1000)
        fresh_lockless = out / ".mobex-build-fresh"
        old_lockless = out / ".mobex-export-old"
        fresh_lockless.mkdir()
        old_lockless.mkdir()
        os.utime(old_lockless, (time.time() - 2 * workdir.LOCKLESS_GRACE_S,) * 2)
        unrelated = out / "digits-cnn-1.0.0-android.zip"
        unrelated.write_bytes(b"keep")
        mine = workdir.create(out)  # what the next build does
        assert live_folder.is_dir() and fresh_lockless.is_dir() and unrelated.is_file() and mine.is_dir()
        assert not dead_folder.exists() and not old_lockless.exists()
        workdir.remove(mine)
        assert not mine.exists()
    finally:
        live.kill()
        live.wait()
    assert workdir.remove_stale(out) == [live_folder]  # its holder is gone now


@pytest.mark.slow
def test_kill_9_of_a_real_build_leaves_no_worker_and_the_next_build_cleans_up(sample_copy, tmp_path: Path) -> None:
    folder = sample_copy("digits_cnn")
    recipe = folder / "recipe.toml"
    text = recipe.read_text()
    recipe.write_text(text[: text.index("[android]")] + '[android]\nvariants = ["fp32", "dynamic-int8", "int8"]\n'
                      '[ios]\nvariants = ["fp32", "fp16", "int8-weights"]\n')  # fmt: skip
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    build = subprocess.Popen([sys.executable, "-m", "mobex", "build", str(recipe), "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)  # fmt: skip
    workers: list[int] = []
    try:
        logs = lambda: list(out.glob(".mobex-build-*/*.log"))  # noqa: E731 - the workers write these first
        assert _wait(lambda: len(logs()) == 2 and len(_spawn_workers(build.pid)) == 2, 240), "export never started"
        workers = _spawn_workers(build.pid)
        time.sleep(1.0)
        assert all(_alive(w) for w in workers)
        os.kill(build.pid, signal.SIGKILL)
        build.wait(10)
        assert _wait(lambda: not any(_alive(w) for w in workers), 5), "export workers outlived the killed build"
    finally:
        build.kill()
        for pid in [w for w in workers if _alive(w)]:  # only when the test fails: leave no orphan behind
            os.kill(pid, signal.SIGKILL)
    stale = list(out.glob(".mobex-build-*"))
    assert len(stale) == 1  # nothing removed it: the build was killed
    second = tabular_recipe(sample_copy("tabular_mlp"), android=["fp32"])
    run = run_mobex("build", str(second), "--out", str(out))
    assert run.code == 0, run.stderr[-3000:]
    assert not stale[0].exists() and not list(out.glob(".mobex-*"))
    assert (out / "tabular-mlp-1.0.0-android.zip").is_file()
