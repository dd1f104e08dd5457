"""The issue's "done when": keygen -> build two versions -> publish to beta -> promote -> serve with a token
-> pull over HTTP (no token: refused) -> rollback -> pull gets the rolled-back version -> a replayed
old pointer is refused. Every step runs the real `mobex` CLI in a subprocess; the models are real
.tflite files (a 2-layer MLP converted with litert-torch) and the installed one is run with LiteRT.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from mobex.bundle.verify import build_bundle

from .conftest import TOKEN, cli_env, make_manifest, mobex_cmd, write_staging

STABLE = "models/digits/channels/stable/android.json"


def mobex(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run(mobex_cmd(*args), capture_output=True, text=True, timeout=300, env=cli_env())
    assert done.returncode == expect, f"mobex {' '.join(args)} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    return done


def tiny_tflite(path: Path, seed: int) -> bytes:
    import torch

    from mobex.converters.tflite import convert_tflite

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    convert_tflite(model, {"x": torch.zeros(1, 4)}, path)
    return path.read_bytes()


@pytest.fixture
def server(tmp_path: Path):
    """Start `mobex serve` on 127.0.0.1 with a token (port 0) once the registry exists; always stopped."""
    procs: list[subprocess.Popen] = []

    def start(registry: Path) -> str:
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        proc = subprocess.Popen(
            mobex_cmd("serve", "--registry", str(registry), "--port", "0", "--token-file", str(token_file)),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env(),
        )  # fmt: skip
        procs.append(proc)
        deadline = time.monotonic() + 60
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            m = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
            if m:
                return m.group(1)
            if not line and proc.poll() is not None:
                break
        raise AssertionError("mobex serve did not start")

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_keygen_build_publish_promote_serve_pull_rollback_replay(tmp_path: Path, server) -> None:
    # keygen
    key = tmp_path / "keys" / "release.pem"
    info = json.loads(mobex("keygen", "--out", str(key), "--json").stdout)
    pub = Path(info["public_key"])

    # build two versions of a bundle around real .tflite models
    zips = {}
    for version, seed in (("1.0.0", 1), ("1.1.0", 2)):
        staging = tmp_path / f"staging-{version}"
        model = tiny_tflite(tmp_path / f"mlp-{version}.tflite", seed)
        write_staging(staging, "digits", version, "android", model_bytes=model)
        zips[version] = build_bundle(
            staging, make_manifest("digits", version), tmp_path / "dist" / f"digits-{version}-android.zip", key,
            source_date_epoch=1_700_000_000,
        )  # fmt: skip

    # publish both to beta, promote to stable
    reg = tmp_path / "registry"
    for version in ("1.0.0", "1.1.0"):
        out = json.loads(mobex("publish", str(zips[version]), "--registry", str(reg), "--channel", "beta",
                               "--key", str(key), "--json").stdout)  # fmt: skip
        assert out["version"] == version and out["pointer"]["moved"]
    promoted = json.loads(mobex("promote", "digits", "--registry", str(reg), "--from", "beta", "--to", "stable",
                                "--key", str(key), "--json").stdout)  # fmt: skip
    assert [(c["channel"], c["version"], c["sequence"]) for c in promoted] == [("stable", "1.1.0", 1)]

    # serve with a token; pull without it is refused, with it installs 1.1.0
    url = server(reg)
    app = tmp_path / "app"
    pull = ["pull", "digits", "--from", url, "--channel", "stable", "--platform", "android",
            "--key", str(pub), "--out", str(app), "--json"]  # fmt: skip
    refused = mobex(*pull, expect=2)
    assert "HTTP 401" in refused.stderr and not (app / "current").exists()
    got = json.loads(mobex(*pull, "--token", TOKEN).stdout)
    assert (got["status"], got["version"], got["sequence"]) == ("installed", "1.1.0", 1)
    assert (app / "current" / "model" / "digits.tflite").read_bytes() == (tmp_path / "mlp-1.1.0.tflite").read_bytes()
    replayable = (reg / STABLE).read_bytes()

    # rollback stable to 1.0.0; the next pull installs it and keeps 1.1.0 as the fallback
    rolled = json.loads(mobex("rollback", "digits", "--registry", str(reg), "--channel", "stable", "--to", "1.0.0",
                              "--key", str(key), "--json").stdout)  # fmt: skip
    assert [(c["version"], c["sequence"], c["downgrade"]) for c in rolled] == [("1.0.0", 2, True)]
    got = json.loads(mobex(*pull, "--token", TOKEN).stdout)
    assert (got["version"], got["sequence"], got["downgrade"], got["previous_version"]) == ("1.0.0", 2, True, "1.1.0")
    assert json.loads((app / "previous" / "manifest.json").read_bytes())["version"] == "1.1.0"
    installed = app / "current" / "model" / "digits.tflite"
    assert installed.read_bytes() == (tmp_path / "mlp-1.0.0.tflite").read_bytes()

    # a replayed old pointer (validly signed, sequence 1) is refused; 1.0.0 stays installed
    (reg / STABLE).write_bytes(replayable)
    replay = mobex(*pull, "--token", TOKEN, expect=5)
    assert "replayed old pointer" in replay.stderr and "keeping 1.0.0" in replay.stderr
    assert installed.read_bytes() == (tmp_path / "mlp-1.0.0.tflite").read_bytes()

    # the installed model is a working LiteRT model, and its bundle still verifies with the CLI
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(installed))
    runner = interp.get_signature_runner()
    out = runner(x=np.ones((1, 4), np.float32))
    assert next(iter(out.values())).shape == (1, 3)
    assert "signature valid" in mobex("verify", str(zips["1.0.0"]), "--key", str(pub)).stdout
    assert os.readlink(app / "current") != os.readlink(app / "previous")
