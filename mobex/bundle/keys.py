"""Signing keys: ECDSA P-256 in PEM.

P-256 with SHA-256 is the one algorithm that model-signing, iOS CryptoKit (`P256.Signing`) and
Android's java.security (`SHA256withECDSA`) all handle natively, so a phone can check a bundle
with no third-party crypto. Private keys are PKCS#8 PEM, unencrypted (CI keeps them in a secret
store), written 0600 and never overwritten: replacing a release key silently would break every
app that pinned the old public key.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import tempfile
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mobex.errors import UsageError

DEV_KEY_NAME = "dev-signing-key.pem"
_MAX_KEY_FILE_BYTES = 1 << 20
_KEYGEN_HINT = "create a key pair with `mobex keygen --out KEY.pem`"
_warned_exposed: set[str] = set()


def public_path_for(private_path: Path) -> Path:
    """The public key's path next to a private key: `release.pem` -> `release.pub.pem`."""
    private_path = Path(private_path)
    name = private_path.name
    base = name[: -len(".pem")] if name.endswith(".pem") else name
    return private_path.with_name(base + ".pub.pem")


def generate_keypair(private_path: Path) -> tuple[Path, Path]:
    """Write a new P-256 private key and its public key; refuse to replace either file.

    Returns (private_path, public_path). Both files are 0600 and appear atomically (written to a
    temporary file, then hard-linked into place, which fails rather than overwrite).
    """
    private_path = Path(private_path).expanduser()
    if private_path.name.endswith(".pub.pem"):
        raise UsageError(
            f"{private_path} looks like a public key name",
            hint="name the private key e.g. release.pem; its public key becomes release.pub.pem",
        )
    public_path = public_path_for(private_path)
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise UsageError(
                f"{path} already exists; refusing to overwrite a signing key",
                hint="choose another --out path, or delete the old key pair yourself if you really "
                "mean to replace it (apps that pinned its public key will reject new bundles)",
            )
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        private_path.parent.mkdir(parents=True, exist_ok=True)
        _write_new_file(private_path, private_pem)
        try:
            _write_new_file(public_path, public_pem)
        except BaseException:
            private_path.unlink(missing_ok=True)
            raise
    except FileExistsError as exc:
        raise UsageError(f"{exc.filename or private_path} appeared while writing the key pair") from exc
    except OSError as exc:
        raise UsageError(f"cannot write key pair at {private_path}: {exc.strerror or exc}") from exc
    return private_path, public_path


def config_dir() -> Path:
    """mobex's per-user config folder: $MOBEX_CONFIG_DIR, else $XDG_CONFIG_HOME/mobex, else ~/.config/mobex."""
    explicit = os.environ.get("MOBEX_CONFIG_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg and Path(xdg).is_absolute():  # the XDG spec says to ignore relative values
        return Path(xdg) / "mobex"
    return Path.home() / ".config" / "mobex"


def dev_key_path() -> Path:
    """The development signing key, used by `mobex build` when no `--key` is given."""
    return config_dir() / DEV_KEY_NAME


def ensure_dev_key() -> tuple[Path, bool]:
    """Return (path of the development private key, whether it was created just now).

    The caller warns the user: bundles signed with this key are for development only. A missing
    public key next to an existing private key is re-derived.
    """
    path = dev_key_path()
    if not path.exists():
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            generate_keypair(path)
            return path, True
        except UsageError:
            if not path.exists():  # not a lost race with another build: a real problem
                raise
    key = load_private_key(path)
    public_path = public_path_for(path)
    if not public_path.exists():
        pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        try:
            _write_new_file(public_path, pem)
        except FileExistsError:
            pass
    return path, False


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load an unencrypted PEM P-256 private key, or raise UsageError saying what is wrong.

    Warns (once per file, on stderr, as ssh does) when the file is readable or writable by group or others."""
    path = Path(path).expanduser()
    data = _read_key_file(path, "private")
    warn_if_exposed(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # cryptography: "Password was not given but private key is encrypted"
        raise UsageError(
            f"{path} is an encrypted private key; mobex needs an unencrypted PEM key",
            hint="decrypt it (openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pem) and keep it in a "
            "secret store, or " + _KEYGEN_HINT,
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        if b"PUBLIC KEY-----" in data:
            raise UsageError(
                f"{path} holds a public key, but a private key is needed to sign",
                hint="pass the private key (KEY.pem), not KEY.pub.pem",
            ) from exc
        raise UsageError(f"{path} is not a PEM private key ({exc})", hint=_KEYGEN_HINT) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError(
            f"{path} is a {type(key).__name__.lstrip('_')}, not an ECDSA P-256 key",
            hint="phones verify P-256 natively; " + _KEYGEN_HINT,
        )
    _check_p256(key.curve, path)
    return key


def warn_if_exposed(path: Path) -> bool:
    """Print a warning if a private key file's permissions let group or others read or change it."""
    if os.name != "posix":
        return False
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    key = str(path.resolve())
    if not mode & 0o077 or key in _warned_exposed:
        return bool(mode & 0o077)
    _warned_exposed.add(key)
    sys.stderr.write(
        f"warning: private key {path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
        f"anyone who can read it can sign bundles as you. Run: chmod 600 {path}\n"
    )
    return True


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Load a PEM P-256 public key (SubjectPublicKeyInfo), or raise UsageError saying what is wrong."""
    path = Path(path).expanduser()
    data = _read_key_file(path, "public")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        if b"PRIVATE KEY-----" in data:
            raise UsageError(
                f"{path} holds a private key; verification takes the public key",
                hint="pass KEY.pub.pem (written by `mobex keygen` next to KEY.pem); never ship the private key",
            ) from exc
        raise UsageError(f"{path} is not a PEM public key ({exc})", hint=_KEYGEN_HINT) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise UsageError(
            f"{path} is a {type(key).__name__.lstrip('_')}, not an ECDSA P-256 public key",
            hint=_KEYGEN_HINT,
        )
    _check_p256(key.curve, path)
    return key


def public_key_hint(key: ec.EllipticCurvePublicKey) -> str:
    """model-signing's `verificationMaterial.publicKey.hint` for this key.

    model-signing 1.1.1 (`_signing/sign_ec_key.py`) hashes the *PEM* encoding of the
    SubjectPublicKeyInfo, as re-serialized by `cryptography` (64-column base64, LF line ends,
    trailing newline), not the DER bytes. We follow its code so the two always agree.
    """
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def public_key_fingerprint(pub_path: Path) -> str:
    """Hex SHA-256 identifying a public key, equal to the `publicKey.hint` in our signatures.

    Ship this string next to the public key in apps and compare it with the hint, instead of
    re-deriving PEM bytes on the device.
    """
    return public_key_hint(load_public_key(pub_path))


def _check_p256(curve: ec.EllipticCurve, path: Path) -> None:
    if not isinstance(curve, ec.SECP256R1):
        raise UsageError(
            f"{path} uses curve {curve.name}; mobex signs with P-256 (secp256r1) only",
            hint="iOS CryptoKit and Android java.security verify P-256 natively; " + _KEYGEN_HINT,
        )


def _read_key_file(path: Path, kind: str) -> bytes:
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a file"
        raise UsageError(f"{kind} key {path} {what}", hint=_KEYGEN_HINT)
    if path.stat().st_size > _MAX_KEY_FILE_BYTES:
        raise UsageError(f"{path} is too large to be a PEM {kind} key", hint=_KEYGEN_HINT)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {kind} key {path}: {exc.strerror or exc}") from exc
    if b"-----BEGIN " not in data:
        raise UsageError(f"{path} is not a PEM file (no '-----BEGIN' line)", hint=_KEYGEN_HINT)
    return data


def _write_new_file(path: Path, data: bytes) -> None:
    """Write `data` to a new 0600 file at `path`, atomically; FileExistsError if it exists."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic and never replaces an existing file
        except FileExistsError:
            raise
        except OSError:  # file systems without hard links
            if path.exists():
                raise FileExistsError(17, "File exists", str(path)) from None
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
