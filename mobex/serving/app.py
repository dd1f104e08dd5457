"""The HTTP API (Starlette): predict (JSON or .npz), the I/O contract, health, metrics, OpenAPI.

`Guard` wraps the whole app as plain ASGI, so it runs before any route code: it times every
request for the metrics, checks the Bearer token (constant-time, as `mobex serve` does; /healthz
stays open for liveness probes) and refuses a declared body over the cap before reading it. The
predict route then reads the body with the same cap (for chunked bodies), checks the inputs against
the contract, and runs the model with a per-request timeout.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import json
import logging
import math
import time
import uuid
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mobex.serving.contract import InputError
from mobex.serving.model import DEFAULT_TOP_K, ServedModel
from mobex.serving.openapi import NPZ_MEDIA_TYPE, build_openapi
from mobex.serving.service import ModelService, Overloaded
from mobex.serving.telemetry import SERVER_APP_VERSION, SERVER_DEVICE_MODEL, prediction_records

log = logging.getLogger("mobex.serving")

JSON_MEDIA_TYPE = "application/json"
_NPZ_TYPES = {NPZ_MEDIA_TYPE, "application/octet-stream"}
_OPEN_PATHS = {"/healthz"}
_MAX_HEADER_VALUE = 64


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# --- routes -----------------------------------------------------------------------------------


async def predict(request: Request) -> Response:
    service: ModelService = request.app.state.service
    model = service.model.acquire()
    try:
        return await _predict(request, service, model)
    except InputError as exc:
        service.metrics.errors.labels("predict", "invalid_input" if exc.status == 422 else str(exc.status)).inc()
        return error(exc.status, exc.message)
    finally:
        model.release()


async def _predict(request: Request, service: ModelService, model: ServedModel) -> Response:
    name = request.path_params["name"]
    if name != model.info.name:
        return error(404, f"no model named {name[:64]!r}; this server serves {model.info.name!r}")
    top_k = _top_k(request, model.num_classes if model.is_classifier else DEFAULT_TOP_K)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != JSON_MEDIA_TYPE and media not in _NPZ_TYPES:
        raise InputError(415, f"Content-Type must be {JSON_MEDIA_TYPE} or {NPZ_MEDIA_TYPE}, not {media[:64]!r}")
    body = await _read_body(request, service.options.max_body_bytes)
    if media == JSON_MEDIA_TYPE:
        arrays, n = model.contract.check_json(_json_inputs(body))
    else:
        arrays, n = model.contract.check_npz(body, service.options.max_body_bytes)
    start = time.perf_counter()
    try:
        result = await service.infer(model, arrays, n)
    except TimeoutError:
        service.metrics.errors.labels("predict", "timeout").inc()
        return error(503, f"inference took longer than {service.options.timeout_s:g} s; retry later",
                     {"Retry-After": "1"})  # fmt: skip
    except Overloaded:
        service.metrics.errors.labels("predict", "overloaded").inc()
        return error(503, "the server is at capacity; retry later", {"Retry-After": "1"})
    service.metrics.inference.observe(time.perf_counter() - start)
    outputs = result.outputs
    request_id = uuid.uuid4().hex
    ids = [f"{request_id}-{i}" for i in range(n)]
    classes = model.classify(outputs[0], top_k) if model.is_classifier else None
    for c in classes or []:
        service.metrics.predictions.labels(c["label"]).inc()
    if service.telemetry is not None:
        service.telemetry.emit(prediction_records(
            model, arrays, outputs, request_id=request_id, latency_ms=result.invocation_s * 1000, classes=classes,
            app_version=_client_header(request, "x-app-version", SERVER_APP_VERSION),
            device_model=_client_header(request, "x-device-model", SERVER_DEVICE_MODEL),
        ))  # fmt: skip
    if media in _NPZ_TYPES and JSON_MEDIA_TYPE not in request.headers.get("accept", ""):
        return _npz_response(model, outputs, request_id)
    payload: dict[str, Any] = {
        "outputs": {spec.name: _json_safe(o) for spec, o in zip(model.contract.outputs, outputs, strict=False)},
        "model": model.info.to_dict(),
        "ids": ids,
    }
    if classes is not None:
        payload["predictions"] = classes
    return Response(json.dumps(payload, allow_nan=False, separators=(",", ":")), media_type=JSON_MEDIA_TYPE)


async def describe(request: Request) -> Response:
    model = request.app.state.service.model
    name = request.path_params["name"]
    if name != model.info.name:
        return error(404, f"no model named {name[:64]!r}; this server serves {model.info.name!r}")
    return JSONResponse(model.describe())


async def healthz(request: Request) -> Response:
    model = request.app.state.service.model
    return JSONResponse({"status": "ok", "model": model.info.to_dict()})


async def metrics(request: Request) -> Response:
    m = request.app.state.service.metrics
    return Response(m.exposition(), media_type=m.content_type)


async def openapi(request: Request) -> Response:
    return JSONResponse(build_openapi(request.app.state.service.model))


# --- helpers ----------------------------------------------------------------------------------


def _top_k(request: Request, classes: int) -> int:
    raw = request.query_params.get("top_k")
    if raw is None:
        return DEFAULT_TOP_K
    if not raw.isdigit() or not 1 <= int(raw) <= max(classes, 1):
        raise InputError(422, f"top_k must be an integer from 1 to {max(classes, 1)} (the classes), not {raw[:32]!r}")
    return int(raw)


async def _read_body(request: Request, cap: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise InputError(413, f"the body is over the {cap}-byte limit; send fewer samples per request")
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise InputError(422, f"{name} is not a JSON number; inputs must be finite numbers")


def _json_inputs(body: bytes) -> Any:
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except InputError:
        raise
    except (ValueError, RecursionError) as exc:
        raise InputError(400, f"the body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise InputError(422, 'the body must be a JSON object {"inputs": {"<input name>": nested list}}')
    return payload["inputs"]


def _json_safe(a: np.ndarray) -> Any:
    values = a.tolist()
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        return _nan_to_none(values)
    return values


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, list):
        return [_nan_to_none(x) for x in v]
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _npz_response(model: ServedModel, outputs: list[np.ndarray], request_id: str) -> Response:
    buf = io.BytesIO()
    np.savez(buf, **{spec.name: o for spec, o in zip(model.contract.outputs, outputs, strict=False)})
    headers = {
        "X-Mobex-Model-Name": model.info.name,
        "X-Mobex-Model-Version": model.info.version,
        "X-Mobex-Model-Sha256": model.info.sha256,
        "X-Mobex-Request-Id": request_id,
    }
    return Response(buf.getvalue(), media_type=NPZ_MEDIA_TYPE, headers=headers)


def _client_header(request: Request, name: str, default: str) -> str:
    value = request.headers.get(name, "").strip()
    if not value or len(value) > _MAX_HEADER_VALUE or not value.isprintable():
        return default
    return value


# --- the guard and the app --------------------------------------------------------------------


def _endpoint(path: str) -> str:
    if path.startswith("/v1/models/"):
        return "predict" if path.endswith(":predict") else "model"
    return {"/healthz": "healthz", "/metrics": "metrics", "/openapi.json": "openapi"}.get(path, "other")


class Guard:
    """Plain-ASGI front of the app: metrics for every request, Bearer token, declared-size cap."""

    def __init__(self, app: Starlette, service: ModelService) -> None:
        self.app = app
        self.service = service
        self.token = service.options.token.encode("ascii") if service.options.token else None

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 - the ASGI signature
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = _endpoint(scope.get("path", ""))
        status = {"code": 500}
        start = time.perf_counter()

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope, endpoint)
            if refusal is not None:
                await refusal(scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        finally:
            m = self.service.metrics
            m.requests.labels(endpoint, str(status["code"])).inc()
            m.latency.labels(endpoint).observe(time.perf_counter() - start)

    def _refusal(self, scope: dict, endpoint: str) -> Response | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        m = self.service.metrics
        if self.token is not None and scope.get("path") not in _OPEN_PATHS:
            scheme, _, value = headers.get("authorization", "").partition(" ")
            given = value.strip().encode("latin-1", "replace") if scheme.lower() == "bearer" else b""
            if not hmac.compare_digest(given, self.token):
                m.errors.labels(endpoint, "unauthorized").inc()
                return error(401, "a valid Bearer token is required", {"WWW-Authenticate": 'Bearer realm="mobex"'})
        length = headers.get("content-length", "")
        cap = self.service.options.max_body_bytes
        if length.isdigit() and int(length) > cap:
            m.errors.labels(endpoint, "too_large").inc()
            return error(413, f"the body is {length} bytes, over the {cap}-byte limit; send fewer samples per request",
                         {"Connection": "close"})  # fmt: skip
        return None


def create_app(service: ModelService) -> Guard:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):  # noqa: ANN202
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    routes = [
        Route("/v1/models/{name}:predict", predict, methods=["POST"]),
        Route("/v1/models/{name}", describe, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.service = service
    return Guard(app, service)
