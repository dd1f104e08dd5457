"""`mobex serve-model`: serve a verified bundle as an HTTP inference API (docs/serving.md).

The pieces, in the order a request meets them: `server` (uvicorn on a socket, the worker threads),
`app` (Starlette routes, Bearer token, body cap, timeout), `contract` (inputs against the manifest's
I/O contract), `model` (a loaded bundle, one runner per worker thread), `batching` (optional dynamic
batching), `runners` (which runtime runs which model format), `bundle` (verify, then extract
privately), `follow` (track a registry channel and swap versions), `metrics`, `telemetry`, `openapi`.
"""
