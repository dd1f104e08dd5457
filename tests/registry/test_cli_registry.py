"""The registry commands as CI runs them: JSON output, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import typer

from mobex.bundle.keys import generate_keypair
from mobex.cli_registry import COMMANDS, register

from .conftest import cli_env, mobex_cmd


def mobex(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run(mobex_cmd(*args), capture_output=True, text=True, timeout=300, env=cli_env())
    assert done.returncode == expect, f"{args} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    return done


def test_register_is_idempotent() -> None:
    app = typer.Typer()
    register(app)
    register(app)
    names = [c.name for c in app.registered_commands]
    assert sorted(names) == sorted(COMMANDS) and [g.name for g in app.registered_groups] == ["trust"]


def test_trust_publish_refresh_and_errors(tmp_path: Path, bundle_factory) -> None:
    keys = {n: generate_keypair(tmp_path / f"{n}.pem") for n in ("root", "release", "ci")}
    reg = tmp_path / "reg"
    mobex("trust", "init", "--registry", str(reg), "--root-key", str(keys["root"][0]),
          "--release-key", str(keys["release"][1]), "--channel-key", str(keys["ci"][1]))  # fmt: skip
    shown = json.loads(mobex("trust", "show", "--registry", str(reg), "--json").stdout)
    assert shown["version"] == 1 and len(shown["roles"]["channel"]["keyids"]) == 1

    bundle = bundle_factory("1.0.0", key=keys["release"][0])
    wrong = mobex("publish", str(bundle), "--registry", str(reg), "--key", str(keys["release"][0]), expect=2)
    assert wrong.stderr.startswith("error: ") and "not a channel key" in wrong.stderr and "hint:" in wrong.stderr
    unsigned = bundle_factory("1.0.1", key=keys["ci"][0])  # signed by a key that is not a release key
    bad = mobex("publish", str(unsigned), "--registry", str(reg), "--key", str(keys["ci"][0]), expect=5)
    assert "not a release key" in bad.stderr
    out = json.loads(mobex("publish", str(bundle), "--registry", str(reg), "--channel", "stable",
                           "--key", str(keys["ci"][0]), "--json").stdout)  # fmt: skip
    assert out["pointer"]["sequence"] == 1
    refreshed = json.loads(mobex("refresh", "digits", "--registry", str(reg), "--channel", "stable",
                                 "--key", str(keys["ci"][0]), "--expires", "2h", "--json").stdout)  # fmt: skip
    assert [(c["sequence"], c["version"]) for c in refreshed] == [(2, "1.0.0")]

    mobex("pull", "../x", "--from", str(reg), "--platform", "android", "--key", str(keys["root"][1]),
          "--out", str(tmp_path / "o"), expect=2)  # fmt: skip
    done = mobex("pull", "digits", "--from", str(reg), "--platform", "android", "--key", str(keys["root"][1]),
                 "--out", str(tmp_path / "o"))  # fmt: skip
    assert "installed 1.0.0" in done.stdout
    late = mobex(
        "publish", str(bundle), "--registry", str(reg), "--key", str(keys["ci"][0]), "--expires", "soon", expect=2
    )
    assert "duration" in late.stderr


def test_staged_promote_and_pulls_by_device_and_app_version(tmp_path: Path, bundle_factory, keypair) -> None:
    from mobex.registry.rollout import bucket

    reg, key, pub = tmp_path / "reg", str(keypair[0]), str(keypair[1])
    mobex("publish", str(bundle_factory("1.0.0")), "--registry", str(reg), "--channel", "stable", "--key", key)
    mobex("publish", str(bundle_factory("1.1.0")), "--registry", str(reg), "--channel", "beta", "--key", key,
          "--min-app-version", "5.0.0")  # fmt: skip
    staged = mobex("promote", "digits", "--registry", str(reg), "--from", "beta", "--to", "stable", "--key", key,
                   "--rollout", "10%")  # fmt: skip
    assert "rollout 10% (other devices keep 1.0.0), apps 5.0.0 or later" in staged.stdout
    inside = next(f"d{i}" for i in range(1000) if bucket("digits", "stable", "1.1.0", f"d{i}") < 100_000)
    pull = ["pull", "digits", "--from", str(reg), "--platform", "android", "--key", pub]
    got = json.loads(mobex(*pull, "--out", str(tmp_path / "a"), "--device-id", inside, "--app-version", "5.1.0",
                           "--json").stdout)  # fmt: skip
    assert (got["version"], got["selected"], got["rollout_ppm"]) == ("1.1.0", "in-rollout", 100_000)
    plain = mobex(*pull, "--out", str(tmp_path / "b"))
    assert "installed 1.0.0" in plain.stdout and "no --device-id" in plain.stdout
    # a full pointer that needs a newer app: exit 7, nothing installed
    mobex("promote", "digits", "--registry", str(reg), "--from", "beta", "--to", "stable", "--key", key)
    old_app = mobex(*pull, "--out", str(tmp_path / "c"), "--app-version", "4.0.0", expect=7)
    assert "ships nothing app version 4.0.0 may install" in old_app.stderr and not (tmp_path / "c" / "current").exists()
