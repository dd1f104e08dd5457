"""A read-only HTTP server for a registry folder, on the standard library's ThreadingHTTPServer.

Good enough to serve a team or a test fleet directly; in production any static host or CDN can
serve the same folder (the files carry their own signatures). What it does:
- GET and HEAD only (405 otherwise); HTTP/1.1 keep-alive; one thread per connection, with a socket
  timeout so idle or slow clients cannot hold threads forever.
- Serves only paths of the registry layout (`layout.classify`): no directory listings, no dot
  files (lock, journal, temporaries), no '..' (also percent-encoded), and each file is opened one
  component at a time without following symlinks.
- Strong ETags (inode, size, mtime: a publish replaces files by rename, so a new file gets a new
  ETag), `If-None-Match` -> 304, single byte `Range` -> 206 (with `If-Range`), unsatisfiable -> 416,
  several ranges -> the whole file (allowed by RFC 9110).
- Content types (application/json, application/zip) with `nosniff`; `Cache-Control: max-age=31536000,
  immutable` for bundles and versioned roots, `max-age=60` for pointers, index and root.json.
- Optional Bearer token (`--token-file`): checked before anything else, with a constant-time
  compare; a missing or wrong token gets 401 and `WWW-Authenticate: Bearer`.
"""

from __future__ import annotations

import email.utils
import hmac
import logging
import os
import re
import threading
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from mobex.errors import UsageError, VerificationError
from mobex.registry import fsutil, layout

log = logging.getLogger("mobex.registry.server")

POINTER_MAX_AGE = 60
IMMUTABLE_MAX_AGE = 31_536_000
SOCKET_TIMEOUT_S = 30
_MAX_PATH = 2048
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$", re.ASCII)
_CHUNK = 1 << 16
_BEYOND_ANY_FILE = 1 << 62


def read_token_file(path: Path) -> str:
    """The token in `path` (surrounding whitespace stripped); it must be printable ASCII without spaces."""
    path = Path(path).expanduser()
    try:
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read token file {path}: {exc}") from exc
    if not token or any(not (0x21 <= ord(c) < 0x7F) for c in token):
        raise UsageError(f"token file {path} must hold one printable ASCII token without spaces")
    if len(token) < 16:
        raise UsageError(f"the token in {path} is shorter than 16 characters", hint="e.g. `openssl rand -hex 32`")
    return token


class RegistryServer(ThreadingHTTPServer):
    """ThreadingHTTPServer bound to one registry folder and an optional token."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, registry: Path, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        registry = Path(registry)
        if not registry.is_dir():
            raise UsageError(f"registry {registry} is not a directory")
        self.registry = Path(os.path.realpath(registry))
        self.token = token.encode("ascii") if token else None
        self._thread: threading.Thread | None = None
        try:
            super().__init__((host, port), RegistryHandler)
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"

    def start(self) -> RegistryServer:
        """Serve in a background thread (for tests and embedding); stop with `stop()`."""
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name="mobex-registry-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RegistryHandler(BaseHTTPRequestHandler):
    server: RegistryServer
    protocol_version = "HTTP/1.1"
    server_version = "mobex-registry"
    sys_version = ""
    timeout = SOCKET_TIMEOUT_S

    def do_GET(self) -> None:  # noqa: N802
        self._serve(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(head=True)

    def _not_allowed(self) -> None:
        self._plain(HTTPStatus.METHOD_NOT_ALLOWED, "read-only registry: GET and HEAD only\n", {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.info("%s %s", self.address_string(), format % args)

    # --- the request --------------------------------------------------------------------------

    def _serve(self, *, head: bool) -> None:
        if not self._authorized():
            self._plain(
                HTTPStatus.UNAUTHORIZED,
                "a Bearer token is required\n",
                {"WWW-Authenticate": 'Bearer realm="mobex-registry"'},
                head=head,
            )
            return
        rel = self._registry_path()
        kind = layout.classify(rel) if rel is not None else None
        if kind is None:
            self._plain(HTTPStatus.NOT_FOUND, "not found\n", head=head)
            return
        try:
            fd = fsutil.open_nofollow(self.server.registry, rel)
        except fsutil.NotFound:
            self._plain(HTTPStatus.NOT_FOUND, "not found\n", head=head)
            return
        except (VerificationError, UsageError, OSError):
            self._plain(HTTPStatus.FORBIDDEN, "forbidden\n", head=head)
            return
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            size = st.st_size
            etag = f'"{st.st_ino:x}-{size:x}-{st.st_mtime_ns:x}"'
            headers = {
                "ETag": etag,
                "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
                "Cache-Control": self._cache_control(kind.immutable),
                "Content-Type": kind.content_type,
                "X-Content-Type-Options": "nosniff",
                "Accept-Ranges": "bytes",
            }
            if _etag_matches(self.headers.get("If-None-Match"), etag):
                self._send(HTTPStatus.NOT_MODIFIED, headers, length=None)
                return
            span = self._range(size, etag)
            if span == "unsatisfiable":
                headers["Content-Range"] = f"bytes */{size}"
                self._plain(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, "range not satisfiable\n", headers, head=head)
                return
            if span is None:
                start, end, status = 0, size - 1, HTTPStatus.OK
            else:
                start, end = span
                status = HTTPStatus.PARTIAL_CONTENT
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            length = max(end - start + 1, 0)
            self._send(status, headers, length=length)
            if head or length == 0:
                return
            f.seek(start)
            remaining = length
            try:
                while remaining > 0:
                    chunk = f.read(min(_CHUNK, remaining))
                    if not chunk:  # file shrank under us: cannot happen with rename-only writers
                        self.close_connection = True
                        return
                    self.wfile.write(chunk)
                    remaining -= len(chunk)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                self.close_connection = True

    def _authorized(self) -> bool:
        expected = self.server.token
        if expected is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        given = value.strip().encode("latin-1", "replace") if scheme.lower() == "bearer" else b""
        return hmac.compare_digest(given, expected)

    def _registry_path(self) -> str | None:
        raw = self.path
        if len(raw) > _MAX_PATH or not raw.startswith("/"):
            return None
        path = urllib.parse.urlsplit(raw).path
        try:
            rel = urllib.parse.unquote(path, errors="strict").lstrip("/")
        except UnicodeDecodeError:
            return None
        if any(part in ("", ".", "..") for part in rel.split("/")) or "\\" in rel or "\x00" in rel:
            return None
        return rel

    def _cache_control(self, immutable: bool) -> str:
        scope = "private" if self.server.token else "public"
        if immutable:
            return f"{scope}, max-age={IMMUTABLE_MAX_AGE}, immutable"
        return f"{scope}, max-age={POINTER_MAX_AGE}"

    def _range(self, size: int, etag: str) -> tuple[int, int] | str | None:
        header = self.headers.get("Range")
        if not header:
            return None
        if_range = self.headers.get("If-Range")
        if if_range is not None and if_range.strip() != etag:
            return None  # the file changed: send it whole
        m = _RANGE_RE.fullmatch(header.strip())
        if not m or (not m.group(1) and not m.group(2)):
            return None  # several ranges or malformed: ignore Range, send 200
        first, last = _position(m.group(1)), _position(m.group(2))
        if first is not None:
            start = first
            end = min(last, size - 1) if last is not None else size - 1
            if last is not None and last < start:
                return None
            if start >= size:
                return "unsatisfiable"
        else:
            suffix = last
            if suffix == 0:
                return "unsatisfiable"
            start, end = max(size - suffix, 0), size - 1
            if size == 0:
                return "unsatisfiable"
        return start, end

    # --- responses ----------------------------------------------------------------------------

    def _send(self, status: HTTPStatus, headers: dict[str, str], *, length: int | None) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _plain(self, status: HTTPStatus, text: str, extra: dict[str, str] | None = None, *, head: bool = False) -> None:
        body = text.encode()
        headers = {
            "Content-Type": "text/plain; charset=utf-8",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        }
        headers.update(extra or {})
        self._send(status, headers, length=len(body))
        if not head:
            self.wfile.write(body)


def _position(digits: str) -> int | None:
    """A Range position; beyond 18 digits it is past the end of any file (int() refuses 4300+ digits)."""
    if not digits:
        return None
    return int(digits) if len(digits) <= 18 else _BEYOND_ANY_FILE


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    tags = [t.strip() for t in header.split(",")]
    return any(t == etag or t == "W/" + etag for t in tags)
