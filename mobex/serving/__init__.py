"""`mobex serve-model`: serve a verified bundle as an HTTP inference API (docs/serving.md).

The pieces, in the order a request meets them: `server` (uvicorn on a socket), `app` (Starlette
routes, Bearer token, body cap), `contract` (inputs against the manifest's I/O contract), `service`
(the current model, worker threads, timeout, swaps), `batching` (optional dynamic batching),
`model` (a loaded bundle, one runner per worker thread), `runners` (which runtime runs which model
format), `bundle` (verify, then extract privately), `follow` (track a registry channel), `metrics`,
`telemetry`, `openapi`; `launch` puts them together for the CLI.
"""
