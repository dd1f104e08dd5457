"""Where `pull` reads a registry from: an HTTP(S) base URL or a local directory, always with size caps.

HTTP uses the standard library (urllib) with: a timeout on every request and a total `Deadline` for
the whole pull (a server that drips a byte every few seconds never trips a per-read timeout), no
redirects at all (a redirect could carry the Bearer token to another host, and a static registry
never needs one), proxies from the environment except for loopback addresses, certificate checks
left on for HTTPS, `If-None-Match` for pointers, and streaming reads that stop one byte past the cap.
A transfer that ends before its Content-Length is a network error (RegistryUnavailable, exit 1: retry),
not a verification failure. A directory source reads through `fsutil` (no symlinks followed). Neither
trusts what it returns: callers verify signatures and digests.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import ipaddress
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from mobex.bounded import short
from mobex.errors import MobexError, UsageError, VerificationError
from mobex.registry import fsutil

TIMEOUT_S = 30.0
DEFAULT_DEADLINE_S = 600.0
_CHUNK = 1 << 16
_SLACK_S = 0.25


class RegistryUnavailable(MobexError):
    """The registry could not be reached or answered with a server error (exit 1: retry later)."""

    exit_code = 1


@dataclass
class Deadline:
    """A total time budget for everything a pull fetches (None: no budget beyond the per-read timeout).

    Checked before every read, and enforced on every connection by a timer that shuts the socket
    down when the budget runs out, so not even a server dripping its headers can outlast it.
    """

    seconds: float | None = DEFAULT_DEADLINE_S
    start: float = field(default_factory=time.monotonic)
    _timers: list[threading.Timer] = field(default_factory=list, repr=False)

    def remaining(self, what: str, slack: float = 0.0) -> float:
        """Seconds left; RegistryUnavailable once the budget is spent (or within `slack` of it: after a
        read failed, a socket timeout set to the time left may fire a hair before the deadline)."""
        if self.seconds is None:
            return float("inf")
        left = self.start + self.seconds - time.monotonic()
        if left <= slack:
            raise RegistryUnavailable(
                f"{what}: the pull took longer than its deadline of {self.seconds:g} s",
                hint="the registry is too slow or stalled; retry, or pass a larger --deadline",
            )
        return left

    def timeout(self, what: str) -> float:
        """The socket timeout for the next blocking operation: the per-read timeout, within the budget."""
        return min(TIMEOUT_S, self.remaining(what))

    def watch(self, sock: socket.socket) -> None:
        """Shut `sock` down when the budget is spent (a blocked read then returns at once)."""
        if self.seconds is None:
            return
        left = max(self.start + self.seconds - time.monotonic(), 0.0)
        timer = threading.Timer(left, _shutdown, args=(sock,))
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def cancel(self) -> None:
        """Stop the timers (the pull is over)."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


class _Watched:
    """Mixin for http.client connections and urllib handlers: every socket they open is watched by a Deadline."""

    def __init__(self, *args, deadline: Deadline, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:  # the connections' hook; the handlers pass `deadline` on to them
        super().connect()  # type: ignore[misc]
        self._deadline.watch(self.sock)  # type: ignore[attr-defined]


class _WatchedHTTPConnection(_Watched, http.client.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, http.client.HTTPSConnection):
    pass


class _WatchedHTTPHandler(_Watched, urllib.request.HTTPHandler):
    def http_open(self, req):  # noqa: ANN001, ANN201
        return self.do_open(_WatchedHTTPConnection, req, deadline=self._deadline)


class _WatchedHTTPSHandler(_Watched, urllib.request.HTTPSHandler):
    def https_open(self, req):  # noqa: ANN001, ANN201
        return self.do_open(_WatchedHTTPSConnection, req, deadline=self._deadline, context=self._context)


@dataclass(frozen=True)
class Fetched:
    data: bytes | None  # None: not found (404), or not modified (see not_modified)
    etag: str | None = None
    not_modified: bool = False


class Source(Protocol):
    description: str

    def get(self, rel: str, max_bytes: int, *, etag: str | None = None) -> Fetched: ...

    def download(self, rel: str, dest: BinaryIO, max_bytes: int) -> tuple[str, int]: ...


def open_source(spec: str | Path, token: str | None = None, deadline: Deadline | None = None) -> Source:
    """An HttpSource for http(s):// URLs, else a DirSource for an existing directory."""
    text = str(spec)
    scheme = urllib.parse.urlsplit(text).scheme.lower()
    if scheme in ("http", "https"):
        return HttpSource(text, token, deadline)
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
    def __init__(self, base_url: str, token: str | None = None, deadline: Deadline | None = None) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if not parts.hostname:
            raise UsageError(f"--from {base_url!r} has no host")
        if parts.username or parts.password:
            raise UsageError("put credentials in --token, not in the URL")
        if token is not None and (not token or any(c.isspace() or ord(c) < 0x21 for c in token)):
            raise UsageError("--token must be a non-empty string without spaces or control characters")
        self.base = base_url.rstrip("/") + "/"
        self.token = token
        self.deadline = deadline or Deadline()
        self.description = base_url
        handlers: list = [
            _NoRedirect(),
            _WatchedHTTPHandler(deadline=self.deadline),
            _WatchedHTTPSHandler(deadline=self.deadline),
        ]
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
            return self._opener.open(req, timeout=self.deadline.timeout(rel))
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
            self.deadline.remaining(rel, slack=_SLACK_S)  # the deadline cut the connection: say so
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
            buffer = io.BytesIO()
            try:
                _copy_capped(resp, buffer, max_bytes, rel, self.deadline)
            except VerificationError:
                raise VerificationError(f"{rel} is larger than the {max_bytes} bytes allowed") from None
            _check_complete(resp, rel, buffer.tell())
            return Fetched(buffer.getvalue(), resp.headers.get("ETag"))

    def download(self, rel: str, dest: BinaryIO, max_bytes: int) -> tuple[str, int]:
        try:
            resp = self._request(rel)
        except fsutil.NotFound as exc:
            raise VerificationError(f"{rel}, named by the signed pointer, is not on the server") from exc
        if resp is None:
            raise RegistryUnavailable(f"{rel}: unexpected HTTP 304")
        with resp:
            _check_length(resp, max_bytes, rel)
            digest, size = _copy_capped(resp, dest, max_bytes, rel, self.deadline)
            _check_complete(resp, rel, size)
            return digest, size


def _check_length(resp, max_bytes: int, rel: str) -> None:  # noqa: ANN001
    length = resp.headers.get("Content-Length")
    if length is not None and length.isascii() and length.isdigit() and (len(length) > 18 or int(length) > max_bytes):
        raise VerificationError(f"{rel} is {short(length, 40)} bytes, more than the {max_bytes} allowed")


def _check_complete(resp, rel: str, size: int) -> None:  # noqa: ANN001
    """http.client counts down Content-Length; anything left when the body ended was cut off in transit."""
    missing = getattr(resp, "length", None)
    if isinstance(missing, int) and missing > 0:
        raise RegistryUnavailable(
            f"the transfer of {rel} was cut short after {size} bytes ({missing} announced bytes never came)",
            hint="a network or server problem; retry (nothing was installed)",
        )


def _read_chunk(src: BinaryIO, n: int, deadline: Deadline | None, rel: str) -> bytes:
    """At most `n` bytes with at most one blocking read (http.client's read1), if the budget allows."""
    if deadline is None:
        return src.read(n)
    deadline.remaining(rel)
    read1 = getattr(src, "read1", None)
    return read1(n) if read1 is not None else src.read(n)


def _copy_capped(
    src: BinaryIO, dest: BinaryIO, max_bytes: int, rel: str, deadline: Deadline | None = None
) -> tuple[str, int]:
    """Copy at most `max_bytes` (one more byte is an error) within `deadline`; return (sha256 hex, size)."""
    h = hashlib.sha256()
    size = 0
    try:
        while chunk := _read_chunk(src, min(_CHUNK, max_bytes + 1 - size), deadline, rel):
            size += len(chunk)
            if size > max_bytes:
                raise VerificationError(
                    f"{rel} holds more than the {max_bytes} bytes the signed pointer promised; aborted"
                )
            h.update(chunk)
            dest.write(chunk)
    except (OSError, http.client.HTTPException) as exc:  # TimeoutError included
        if deadline is not None:
            deadline.remaining(rel, slack=_SLACK_S)  # say "deadline" when that is what ran out
        raise RegistryUnavailable(f"download of {rel} failed: {exc!r}") from None
    if deadline is not None:
        deadline.remaining(rel, slack=_SLACK_S)  # the watchdog ends a stalled transfer as if the server closed it
    return h.hexdigest(), size


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
