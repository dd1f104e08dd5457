"""Where `pull` reads a registry from: an HTTP(S) base URL or a local directory, always with size caps.

HTTP uses the standard library (urllib) with: a timeout on every request, no redirects at all (a
redirect could carry the Bearer token to another host, and a static registry never needs one),
proxies from the environment except for loopback addresses, certificate checks left on for HTTPS,
`If-None-Match` for pointers, and streaming reads that stop one byte past the cap. A directory
source reads through `fsutil` (no symlinks followed). Neither trusts what it returns: callers
verify signatures and digests.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from mobex.errors import MobexError, UsageError, VerificationError
from mobex.registry import fsutil

TIMEOUT_S = 30.0
_CHUNK = 1 << 16


class RegistryUnavailable(MobexError):
    """The registry could not be reached or answered with a server error (exit 1: retry later)."""

    exit_code = 1


@dataclass(frozen=True)
class Fetched:
    data: bytes | None  # None: not found (404), or not modified (see not_modified)
    etag: str | None = None
    not_modified: bool = False


class Source(Protocol):
    description: str

    def get(self, rel: str, max_bytes: int, *, etag: str | None = None) -> Fetched: ...

    def download(self, rel: str, dest: BinaryIO, max_bytes: int) -> tuple[str, int]: ...


def open_source(spec: str | Path, token: str | None = None) -> Source:
    """An HttpSource for http(s):// URLs, else a DirSource for an existing directory."""
    text = str(spec)
    scheme = urllib.parse.urlsplit(text).scheme.lower()
    if scheme in ("http", "https"):
        return HttpSource(text, token)
    if scheme and len(scheme) > 1:
        raise UsageError(f"--from {text!r}: only http://, https:// URLs and local directories are supported")
    path = Path(text).expanduser()
    if not path.is_dir():
        raise UsageError(f"--from {text}: no such registry directory")
    if token:
        raise UsageError("--token is for HTTP registries; a directory needs none")
    return DirSource(path)


class DirSource:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.description = str(root)

    def get(self, rel: str, max_bytes: int, *, etag: str | None = None) -> Fetched:
        try:
            return Fetched(fsutil.read_file(self.root, rel, max_bytes))
        except fsutil.NotFound:
            return Fetched(None)

    def download(self, rel: str, dest: BinaryIO, max_bytes: int) -> tuple[str, int]:
        try:
            fd = fsutil.open_nofollow(self.root, rel)
        except fsutil.NotFound as exc:
            raise VerificationError(f"{rel}, named by the signed pointer, is not in the registry") from exc
        with os.fdopen(fd, "rb") as src:
            return _copy_capped(src, dest, max_bytes, rel)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused", headers, fp)


class HttpSource:
    def __init__(self, base_url: str, token: str | None = None) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if not parts.hostname:
            raise UsageError(f"--from {base_url!r} has no host")
        if parts.username or parts.password:
            raise UsageError("put credentials in --token, not in the URL")
        if token is not None and (not token or any(c.isspace() or ord(c) < 0x21 for c in token)):
            raise UsageError("--token must be a non-empty string without spaces or control characters")
        self.base = base_url.rstrip("/") + "/"
        self.token = token
        self.description = base_url
        handlers: list = [_NoRedirect()]
        if _is_loopback(parts.hostname):
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)

    def _request(self, rel: str, etag: str | None = None):  # noqa: ANN202
        url = self.base + urllib.parse.quote(rel, safe="/")
        headers = {"User-Agent": "mobex-pull", "Accept-Encoding": "identity", "Cache-Control": "no-cache"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if etag:
            headers["If-None-Match"] = etag
        req = urllib.request.Request(url, headers=headers, method="GET")
        try:
            return self._opener.open(req, timeout=TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 304:
                return None
            if exc.code == 404:
                raise fsutil.NotFound(f"{rel} is not on {self.description} (HTTP 404)") from None
            if exc.code in (401, 403):
                raise UsageError(
                    f"{self.description} refused the request (HTTP {exc.code})",
                    hint="pass the registry's token with --token (the server was started with --token-file)",
                ) from None
            if 300 <= exc.code < 400:
                raise VerificationError(f"{url} redirected (HTTP {exc.code}); mobex follows no redirects") from None
            raise RegistryUnavailable(f"{url} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise RegistryUnavailable(f"cannot reach {self.description}: {reason}") from None

    def get(self, rel: str, max_bytes: int, *, etag: str | None = None) -> Fetched:
        try:
            resp = self._request(rel, etag)
        except fsutil.NotFound:
            return Fetched(None)
        if resp is None:
            return Fetched(None, etag, not_modified=True)
        with resp:
            _check_length(resp, max_bytes, rel)
            try:
                data = resp.read(max_bytes + 1)
            except (OSError, http.client.HTTPException) as exc:
                raise RegistryUnavailable(f"reading {rel} failed: {exc!r}") from None
            if len(data) > max_bytes:
                raise VerificationError(f"{rel} is larger than the {max_bytes} bytes allowed")
            return Fetched(data, resp.headers.get("ETag"))

    def download(self, rel: str, dest: BinaryIO, max_bytes: int) -> tuple[str, int]:
        try:
            resp = self._request(rel)
        except fsutil.NotFound as exc:
            raise VerificationError(f"{rel}, named by the signed pointer, is not on the server") from exc
        if resp is None:
            raise RegistryUnavailable(f"{rel}: unexpected HTTP 304")
        with resp:
            _check_length(resp, max_bytes, rel)
            return _copy_capped(resp, dest, max_bytes, rel)


def _check_length(resp, max_bytes: int, rel: str) -> None:  # noqa: ANN001
    length = resp.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise VerificationError(f"{rel} is {length} bytes, more than the {max_bytes} allowed")


def _copy_capped(src: BinaryIO, dest: BinaryIO, max_bytes: int, rel: str) -> tuple[str, int]:
    """Copy at most `max_bytes` (one more byte is an error); return (sha256 hex, size)."""
    h = hashlib.sha256()
    size = 0
    try:
        while chunk := src.read(min(_CHUNK, max_bytes + 1 - size)):
            size += len(chunk)
            if size > max_bytes:
                raise VerificationError(
                    f"{rel} holds more than the {max_bytes} bytes the signed pointer promised; aborted"
                )
            h.update(chunk)
            dest.write(chunk)
    except (OSError, http.client.HTTPException) as exc:
        raise RegistryUnavailable(f"download of {rel} failed: {exc!r}") from None
    return h.hexdigest(), size


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
