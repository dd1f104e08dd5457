"""Shared fixtures for the registry tests: real keys, real signed bundles, registries, a running server."""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mobex.artifacts import TensorSpec
from mobex.bundle.keys import generate_keypair
from mobex.bundle.manifest import Manifest, iso_utc, model_section
from mobex.bundle.verify import build_bundle

ROOT = Path(__file__).resolve().parents[2]
EPOCH = 1_700_000_000
LABELS = ["zero", "one", "two"]
TOKEN = "test-token-0123456789abcdef"
CLI_SHIM = (
    "import sys; import mobex.cli as cli; from mobex.cli_registry import register; "
    "register(cli.app); sys.argv[0] = 'mobex'; cli.main()"
)


def mobex_cmd(*args: str) -> list[str]:
    """argv running the mobex CLI with the registry commands registered (whether or not cli.py does it yet)."""
    return [sys.executable, "-c", CLI_SHIM, *args]


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def pseudo_random(n: int, seed: bytes) -> bytes:
    """Deterministic incompressible bytes standing in for model weights."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(seed + counter.to_bytes(8, "little")).digest()
        counter += 1
    return bytes(out[:n])


def make_manifest(name: str = "digits", version: str = "1.0.0", platform: str = "android") -> Manifest:
    ios = platform == "ios"
    return Manifest(
        name=name,
        version=version,
        platform=platform,
        created=iso_utc(EPOCH),
        model=model_section(
            path="model/Digits.mlpackage" if ios else f"model/{name}.tflite",
            format="mlpackage" if ios else "tflite",
            quantization="fp16" if ios else "fp32",
            inputs=[TensorSpec("x", (1, 4), "float32")],
            outputs=[TensorSpec("y", (1, 3), "float32")],
            minimum_os={"ios": "iOS16"} if ios else {"android_min_sdk": 24},
        ),
        labels=LABELS,
        task="classification",
    )


def write_staging(root: Path, name: str, version: str, platform: str, model_bytes: bytes | None = None) -> Path:
    if platform == "android":
        files = {f"model/{name}.tflite": model_bytes or pseudo_random(4000, f"{name}{version}".encode())}
    else:
        pkg = "model/Digits.mlpackage"
        files = {
            f"{pkg}/Manifest.json": b'{"fileFormatVersion": "1.0.0"}\n',
            f"{pkg}/Data/com.apple.CoreML/model.mlmodel": pseudo_random(1000, f"m{version}".encode()),
            f"{pkg}/Data/com.apple.CoreML/weights/weight.bin": pseudo_random(3000, f"w{version}".encode()),
        }
    files["assets/labels.txt"] = ("\n".join(LABELS) + "\n").encode()
    files["report.json"] = b'{"variants": []}\n'
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.fixture(scope="session")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The single key of the default setup (root = release = channel)."""
    return generate_keypair(tmp_path_factory.mktemp("keys") / "release.pem")


@pytest.fixture(scope="session")
def other_keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("other-keys") / "attacker.pem")


@pytest.fixture(scope="session")
def bundle_factory(tmp_path_factory: pytest.TempPathFactory, keypair) -> Callable[..., Path]:
    """Build (and cache) a signed bundle: make(version, platform='android', name='digits', key=None)."""
    cache: dict[tuple, Path] = {}
    base = tmp_path_factory.mktemp("bundles")

    def make(
        version: str = "1.0.0",
        platform: str = "android",
        name: str = "digits",
        key: Path | None = None,
        model_bytes: bytes | None = None,
    ) -> Path:
        key = key or keypair[0]
        ident = (version, platform, name, str(key), hashlib.sha256(model_bytes or b"").hexdigest())
        if ident not in cache:
            folder = base / hashlib.sha256(repr(ident).encode()).hexdigest()[:16]
            staging = write_staging(folder / "staging", name, version, platform, model_bytes)
            out = folder / f"{name}-{version}-{platform}.zip"
            manifest = make_manifest(name, version, platform)
            cache[ident] = build_bundle(staging, manifest, out, key, source_date_epoch=EPOCH)
        return cache[ident]

    return make


def tree_snapshot(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """rel path -> bytes for every file under root (symlinks as 'LINK:target'), skipping names in `skip`."""
    out: dict[str, bytes] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
            if name in skip:
                continue
            path = Path(dirpath, name)
            rel = (rel_dir / name).as_posix()
            out[rel] = f"LINK:{os.readlink(path)}".encode() if path.is_symlink() else path.read_bytes()
    return out


def zip_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()


@pytest.fixture
def server_factory() -> Iterator[Callable[..., object]]:
    """Start RegistryServer instances on 127.0.0.1 (port 0); all are stopped after the test."""
    from mobex.registry.server import RegistryServer

    started: list[RegistryServer] = []

    def start(registry: Path, token: str | None = None) -> RegistryServer:
        server = RegistryServer(registry, "127.0.0.1", 0, token).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def load_vectors_script():
    """scripts/make_conformance_vectors.py as a module (scripts/ is not a package)."""
    import importlib.util

    path = ROOT / "scripts" / "make_conformance_vectors.py"
    spec = importlib.util.spec_from_file_location("make_conformance_vectors", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def vectors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh set of conformance vectors (the folder holding vectors.json)."""
    out = tmp_path_factory.mktemp("vectors") / "v"
    load_vectors_script().generate(out)
    return out
