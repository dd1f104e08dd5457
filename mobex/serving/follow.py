"""Follow a registry channel: poll the pointer with `mobex pull`, verify, load, warm up, swap.

Every check is a full `pull` (signed pointer, freeze, rollback and downgrade checks, capped
download, bundle signature by a release key) into a private state folder. A new bundle is copied
out of it, loaded and run once on a neutral input before it is swapped in; if any step fails, the
old model keeps serving, the reason is logged and counted (`mobex_model_updates_total{result=
"rejected"}`), and a bundle that failed to load is not retried until the channel moves on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mobex.errors import MobexError
from mobex.registry.pull import pull
from mobex.serving.bundle import LoadedBundle, open_installed
from mobex.serving.model import ServedModel
from mobex.serving.service import ModelService

log = logging.getLogger("mobex.serving.follow")


@dataclass(frozen=True)
class ChannelSpec:
    source: str  # registry URL or folder
    name: str
    channel: str
    platform: str
    key: Path  # the pinned root public key or root.json, as for `mobex pull --key`
    state_dir: Path  # pull's --out: installed bundles and the pointer sequences seen
    token: str | None = None  # Bearer token of an HTTP registry


class ChannelFollower:
    def __init__(self, spec: ChannelSpec, load: Callable[[LoadedBundle], ServedModel], poll_s: float = 30.0) -> None:
        self.spec = spec
        self.load = load
        self.poll_s = poll_s
        self.last: str = "not checked yet"
        self._rejected: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _pull(self):  # noqa: ANN202 - a PullResult
        s = self.spec
        return pull(s.name, s.source, s.channel, s.platform, s.key, s.state_dir, token=s.token)

    def _open(self, result) -> ServedModel:  # noqa: ANN001 - a PullResult
        bundle = open_installed(Path(result.path), result.sha256, f"{self.spec.source} {self.spec.channel}")
        try:
            return self.load(bundle)
        except BaseException:
            bundle.cleanup()
            raise

    def initial(self) -> ServedModel:
        """The model the channel ships now; raises (nothing to serve) if it cannot be pulled or loaded."""
        return self._open(self._pull())

    def check_once(self, service: ModelService) -> str:
        """One poll: 'swapped A -> B', 'up to date', or 'rejected: why' (the old model keeps serving)."""
        current = service.model.info
        result = None
        try:
            result = self._pull()
            if result.sha256 == current.sha256:
                return self._note("up to date")
            if result.sha256 in self._rejected:
                return self._note(f"up to date ({result.version} was rejected before)")
            model = self._open(result)
            service.swap(model)  # builds the new model's interpreters on every worker thread first
        except Exception as exc:  # noqa: BLE001 - a bad bundle or registry must never take the server down
            why = exc.message if isinstance(exc, MobexError) else f"{type(exc).__name__}: {exc}"
            if result is not None:
                self._rejected.add(result.sha256)  # pulled and verified, but it does not load: do not retry
            service.metrics.updates.labels("rejected").inc()
            log.warning("channel update rejected, still serving %s: %s", current.version, why)
            return self._note(f"rejected: {why}")
        service.metrics.updates.labels("swapped").inc()
        return self._note(f"swapped {current.version} -> {model.info.version}")

    def _note(self, text: str) -> str:
        self.last = text
        return text

    def start(self, service: ModelService) -> None:
        def loop() -> None:
            while not self._stop.wait(self.poll_s):
                self.check_once(service)

        self._thread = threading.Thread(target=loop, name="mobex-channel-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
