"""The OpenAPI 3.1 document the server serves at /openapi.json, written for the model being served.

Input schemas carry the model's names, sample shapes, value types and preprocessing range, so a
client generator (or schemathesis) produces requests the contract accepts, and knows which 4xx
answers the others get.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mobex import __version__ as mobex_version
from mobex.serving.contract import TensorContract
from mobex.serving.model import ServedModel

NPZ_MEDIA_TYPE = "application/x-npz"
_ERRORS = {
    "400": "The body is not valid JSON or .npz",
    "401": "Missing or wrong Bearer token",
    "404": "No model of that name is served",
    "413": "The body is larger than the server's limit",
    "415": "Content-Type is neither application/json nor application/x-npz",
    "422": "The inputs do not match the model's I/O contract (the message says how)",
    "503": "The request timed out or the server is at capacity; retry later",
}


def _leaf(spec: TensorContract, value_range: tuple[float, float] | None) -> dict[str, Any]:
    dtype = spec.request_dtype
    if dtype.kind == "b":
        return {"type": "boolean"}
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return {"type": "integer", "minimum": int(info.min), "maximum": int(info.max)}
    leaf: dict[str, Any] = {"type": "number"}
    if value_range is not None:
        leaf.update(minimum=value_range[0], maximum=value_range[1])
    return leaf


def tensor_schema(spec: TensorContract, max_samples: int, value_range: tuple[float, float] | None) -> dict:
    """Nested arrays of shape [N, *sample shape], 1 <= N <= max_samples."""
    schema = _leaf(spec, value_range)
    for dim in reversed(spec.sample_shape):
        schema = {"type": "array", "minItems": dim, "maxItems": dim, "items": schema}
    return {"type": "array", "minItems": 1, "maxItems": max_samples, "items": schema,
            "description": f"{spec.name}: {spec.describe()}"}  # fmt: skip


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _error_responses(*codes: str) -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/Error"}
    return {c: {"description": _ERRORS[c], "content": _json(ref)} for c in codes}


def _get(summary: str, description: str, content: dict, *errors: str, **extra: Any) -> dict[str, Any]:
    responses = {"200": {"description": description, "content": content}, **_error_responses(*errors)}
    return {"get": {"summary": summary, "responses": responses, **extra}}


def _predict_operation(model: ServedModel, name_param: dict) -> dict[str, Any]:
    c = model.contract
    inputs = {
        "type": "object",
        "required": c.input_names,
        "additionalProperties": False,
        "properties": {t.name: tensor_schema(t, c.max_samples, c.value_range) for t in c.inputs},
    }
    binary = {"schema": {"type": "string", "format": "binary"}}
    top_k = {"type": "integer", "minimum": 1, "maximum": max(model.num_classes if model.is_classifier else 5, 1)}
    ok = {
        "description": "Outputs in the manifest's order, and which model produced them",
        "content": {**_json({"$ref": "#/components/schemas/PredictResponse"}), NPZ_MEDIA_TYPE: binary},
    }
    return {
        "summary": f"Run {model.info.name} on N samples",
        "parameters": [name_param, {"name": "top_k", "in": "query", "required": False, "schema": top_k}],
        "requestBody": {
            "required": True,
            "content": {
                **_json({"type": "object", "required": ["inputs"], "properties": {"inputs": inputs}}),
                NPZ_MEDIA_TYPE: binary,
            },
        },
        "responses": {"200": ok, **_error_responses("400", "401", "404", "413", "415", "422", "503")},
    }


def _schemas(model: ServedModel) -> dict[str, Any]:
    strings, arrays = {"type": "string"}, {"type": "array"}
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": strings}},
        "Model": {
            "type": "object",
            "required": ["name", "version", "sha256"],
            "properties": {k: strings for k in ("name", "version", "sha256")},
        },
        "PredictResponse": {
            "type": "object",
            "required": ["outputs", "model", "ids"],
            "properties": {
                "outputs": {"type": "object", "properties": {t.name: arrays for t in model.contract.outputs}},
                "model": {"$ref": "#/components/schemas/Model"},
                "ids": {"type": "array", "items": strings},
                "predictions": {"type": "array", "items": {"type": "object"}},
            },
        },
    }


def build_openapi(model: ServedModel) -> dict[str, Any]:
    name_schema = {"type": "string", "enum": [model.info.name]}
    name_param = {"name": "name", "in": "path", "required": True, "schema": name_schema}
    obj = {"type": "object"}
    text = {"text/plain": {"schema": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"mobex model server: {model.info.name}",
            "version": mobex_version,
            "description": "Serves a signed, verified mobex bundle (docs/serving.md).",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/models/{name}:predict": {"post": _predict_operation(model, name_param)},
            "/v1/models/{name}": _get(
                "The model's I/O contract (from its signed manifest)", "The contract",
                _json({**obj, "required": ["model", "inputs", "outputs"]}), "401", "404", parameters=[name_param],
            ),  # fmt: skip
            "/healthz": _get("Liveness and the model version", "Serving", _json(obj), security=[]),
            "/metrics": _get("Prometheus metrics", "Prometheus text format", text, "401"),
            "/openapi.json": _get("This document", "OpenAPI 3.1", _json(obj), "401"),
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}, "schemas": _schemas(model)},
    }
