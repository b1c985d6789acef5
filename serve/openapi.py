"""The OpenAPI 3.1 document of the service, built from the schemas that validate requests."""

from __future__ import annotations

from typing import Any

from serve.schema import generate_query_schema, generate_request_schema

API_VERSION = "1.0.0"
NAME_HEADER = "X-Model-Name"
VERSION_HEADER = "X-Model-Version"
PID_HEADER = "X-Worker-Pid"

_INT = {"type": "integer"}
_STR = {"type": "string"}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["status", "code", "message"],
            "additionalProperties": False,
            "properties": {"status": _INT, "code": _STR, "message": _STR},
        }
    },
}
HEALTH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status", "pid"],
    "properties": {"status": {"type": "string", "enum": ["ok"]}, "pid": _INT},
}
READY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status", "models"],
    "properties": {
        "status": {"type": "string", "enum": ["ready"]},
        "models": {"type": "array", "items": _STR},
    },
}
_SUMMARY_PROPERTIES: dict[str, Any] = {
    "name": _STR,
    "default_version": _INT,
    "versions": {"type": "array", "items": _INT},
    "latent_size": _INT,
    "conditional": {"type": "boolean"},
    "classes": {"type": ["array", "null"], "items": _STR},
    "image_shape": {"type": "array", "items": _INT, "description": "[C, H, W]"},
}
MODEL_SUMMARY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A model; the per-version fields describe its default (highest) version.",
    "required": list(_SUMMARY_PROPERTIES),
    "properties": _SUMMARY_PROPERTIES,
}
MODEL_LIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["default", "models"],
    "properties": {
        "default": {"type": ["string", "null"], "description": "Model used when none is named."},
        "models": {"type": "array", "items": MODEL_SUMMARY_SCHEMA},
    },
}
MODEL_DETAIL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [*_SUMMARY_PROPERTIES, "metadata"],
    "properties": _SUMMARY_PROPERTIES
    | {
        "metadata": {
            "type": "array",
            "description": "model.json of every version, highest last.",
            "items": {"type": "object"},
        }
    },
}
GENERATE_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "version", "shape", "seeds", "labels", "images"],
    "properties": {
        "model": _STR,
        "version": _INT,
        "shape": {"type": "array", "items": _INT, "description": "[n, C, H, W] of the images"},
        "seeds": {"type": ["array", "null"], "items": _INT, "description": "null for noise"},
        "labels": {"type": ["array", "null"], "items": _INT},
        "images": {
            "type": "array",
            "description": "One base64-encoded PNG per sample, in request order.",
            "items": {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/png"},
        },
    },
}

_BINARY = {"type": "string", "contentMediaType": "application/octet-stream"}
_PNG = {"type": "string", "contentMediaType": "image/png"}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(schema: str, description: str = "OK") -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _model_headers() -> dict[str, Any]:
    return {
        NAME_HEADER: {"description": "Model that produced the images.", "schema": _STR},
        VERSION_HEADER: {"description": "Its version.", "schema": _INT},
    }


_GENERATE_ERRORS = {
    "400": _error("Malformed JSON or a field of the wrong type."),
    "404": _error("Unknown model or version."),
    "422": _error("Semantically invalid: limits, ranges, noise shape, labels, unknown fields."),
    "503": _error("No model loaded."),
}


def build_spec(max_samples: int, max_body_bytes: int) -> dict[str, Any]:
    """The whole document, with the configured limits in the schemas."""
    query = generate_query_schema(max_samples)
    parameters = [
        {
            "name": name,
            "in": "query",
            "required": name in query["required"],
            "schema": schema,
            "style": "form",
            "explode": False,
        }
        for name, schema in query["properties"].items()
    ]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "GAN image generator",
            "version": API_VERSION,
            "description": (
                "Images from a GAN generator exported to ONNX. A seed s gives the noise "
                "numpy.random.Generator(numpy.random.PCG64(s)).standard_normal(d, "
                "dtype=numpy.float32); the same seed and model version always give the same "
                f"PNG. Every response carries {PID_HEADER}; every error is an Error object."
            ),
        },
        "paths": {
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json("Health")}}},
            "/readyz": {
                "get": {
                    "summary": "Readiness: 200 only when models are loaded",
                    "responses": {"200": _json("Ready"), "503": _error("No model loaded.")},
                }
            },
            "/models": {
                "get": {"summary": "Models served", "responses": {"200": _json("ModelList")}}
            },
            "/models/{name}": {
                "get": {
                    "summary": "One model: versions and metadata",
                    "parameters": [
                        {"name": "name", "in": "path", "required": True, "schema": _STR}
                    ],
                    "responses": {
                        "200": _json("ModelDetail"),
                        "404": _error("Unknown model."),
                    },
                }
            },
            "/generate": {
                "post": {
                    "summary": "Generate images from seeds or noise",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/GenerateRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": (
                                "json: base64 PNGs; png: one grid, ncol = ceil(sqrt(n)), 2 px "
                                "padding; npy: float32 [n, C, H, W] in [0, 1]."
                            ),
                            "headers": _model_headers(),
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/GenerateResponse"}
                                },
                                "image/png": {"schema": _PNG},
                                "application/x-npy": {"schema": _BINARY},
                            },
                        },
                        **_GENERATE_ERRORS,
                        "413": _error(f"Body larger than {max_body_bytes} bytes."),
                        "415": _error("Content-Type is not application/json."),
                    },
                },
                "get": {
                    "summary": "A PNG grid of the images of seeds seed .. seed+n-1",
                    "parameters": parameters,
                    "responses": {
                        "200": {
                            "description": "One grid, ncol = ceil(sqrt(n)), 2 px padding.",
                            "headers": _model_headers(),
                            "content": {"image/png": {"schema": _PNG}},
                        },
                        **_GENERATE_ERRORS,
                    },
                },
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "GenerateRequest": generate_request_schema(max_samples),
                "GenerateResponse": GENERATE_RESPONSE_SCHEMA,
                "ModelList": MODEL_LIST_SCHEMA,
                "ModelSummary": MODEL_SUMMARY_SCHEMA,
                "ModelDetail": MODEL_DETAIL_SCHEMA,
                "Health": HEALTH_SCHEMA,
                "Ready": READY_SCHEMA,
                "Error": ERROR_SCHEMA,
            }
        },
    }
