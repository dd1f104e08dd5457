"""Run the app with uvicorn on a socket bound here (so port 0 works and the real port is known).

uvicorn runs the asyncio event loop (HTTP/1.1 keep-alive through h11); inference runs on the
service's worker threads, so a slow model never blocks the loop. `ModelServer.start()` serves from
a background thread (tests, embedding); `serve_forever()` serves in the calling thread and stops
cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from mobex.errors import UsageError
from mobex.serving.app import create_app
from mobex.serving.service import ModelService

KEEP_ALIVE_S = 15


class ModelServer:
    def __init__(self, service: ModelService, host: str = "127.0.0.1", port: int = 0) -> None:
        self.service = service
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without it
        # a keep-alive response (headers, then body) waits 40 ms for the client's delayed ACK (Nagle).
        self.sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.sock.listen(1024)
        config = uvicorn.Config(
            create_app(service), log_level="warning", access_log=False, lifespan="on",
            timeout_keep_alive=KEEP_ALIVE_S, server_header=False,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        self.server.run(sockets=[self.sock])

    def start(self, timeout_s: float = 30.0) -> ModelServer:
        self._thread = threading.Thread(target=self.serve_forever, name="mobex-model-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise UsageError("the model server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.sock.close()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
