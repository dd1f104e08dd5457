"""Put a model server together from command-line choices: the model (a bundle or a channel), the
service, the channel follower, telemetry and the HTTP server. `mobex serve-model` is a thin shell
around `prepare` and `ModelServer.serve_forever`.
"""

from __future__ import annotations

import ipaddress
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mobex.errors import UsageError
from mobex.serving.bundle import LoadedBundle, open_bundle_zip
from mobex.serving.follow import ChannelFollower, ChannelSpec
from mobex.serving.metrics import ServingMetrics
from mobex.serving.model import ServedModel
from mobex.serving.server import ModelServer
from mobex.serving.service import ModelService, ServeOptions
from mobex.serving.telemetry import TelemetrySink


@dataclass(frozen=True)
class Launch:
    server: ModelServer
    service: ModelService
    follower: ChannelFollower | None


def load_model(bundle: LoadedBundle, options: ServeOptions) -> ServedModel:
    """A ServedModel that has run once; its files are removed if it cannot."""
    try:
        model = ServedModel(bundle, threads=options.threads, max_samples=options.max_samples)
        model.warm_up()
        return model
    except BaseException:
        bundle.cleanup()
        raise


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a token: a model server must not be open by accident."""
    if token is not None:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UsageError(
            f"--host {host} is reachable from other machines, and no --token-file was given",
            hint="pass --token-file FILE (e.g. from `openssl rand -hex 32`), or listen on 127.0.0.1",
        )


def prepare(
    options: ServeOptions,
    *,
    host: str,
    port: int,
    bundle_zip: Path | None = None,
    key: Path,
    channel: ChannelSpec | None = None,
    poll_s: float = 30.0,
    telemetry: Path | None = None,
) -> Launch:
    """Verify and load the model, then bind the server (not yet serving)."""
    check_exposure(host, options.token)
    if (bundle_zip is None) == (channel is None):
        raise UsageError("serve either a BUNDLE.zip or a registry channel (--from ... --name ...), not both")
    follower = None
    if channel is not None:
        follower = ChannelFollower(channel, lambda b: load_model(b, options), poll_s=poll_s)
        model = follower.initial()
    else:
        model = load_model(open_bundle_zip(bundle_zip, key), options)  # type: ignore[arg-type]
    metrics = ServingMetrics()
    sink = TelemetrySink(telemetry, on_drop=metrics.telemetry_dropped.inc) if telemetry else None
    service = ModelService(model, options, metrics, sink)
    if follower is not None:
        service.on_stop.append(follower.stop)
    return Launch(ModelServer(service, host, port), service, follower)


def default_state_dir() -> Path:
    """A private folder for pull's state when --state-dir is not given (replay protection lasts one run)."""
    return Path(tempfile.mkdtemp(prefix="mobex-serve-channel-"))
