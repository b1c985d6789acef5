"""The OpenAPI 3.1 document of the service, built from the schemas that validate requests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from serve.schema import INT64_MAX, generate_query_schema, generate_request_schema

API_VERSION = "1.0.0"
NAME_HEADER = "X-Model-Name"
VERSION_HEADER = "X-Model-Version"
PID_HEADER = "X-Worker-Pid"
# Cache-Control of a /generate response that can never change (model and version named),
# and of one that can (the default model and version move when models are exported).
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

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
    "required": ["status", "models", "repository", "rejected"],
    "properties": {
        "status": {"type": "string", "enum": ["ready"]},
        "models": {"type": "array", "items": _STR},
        "repository": {
            "type": "string",
            "enum": ["ok", "unavailable"],
            "description": "unavailable: the last rescan could not read the model repository; "
            "the loaded versions are served from memory meanwhile (the log says why).",
        },
        "rejected": {
            "type": "array",
            "description": "Versions on disk that fail the service's checks, and why; the "
            "others are served.",
            "items": {
                "type": "object",
                "required": ["model", "version", "reason"],
                "properties": {"model": _STR, "version": _INT, "reason": _STR},
            },
        },
    },
}
_SUMMARY_PROPERTIES: dict[str, Any] = {
    "name": _STR,
    "default_version": _INT,
    "versions": {
        "type": "array",
        "items": _INT,
        "description": "Every servable version on disk, lowest first; any of them may be pinned.",
    },
    "policy_versions": {
        "type": "array",
        "items": _INT,
        "description": "The versions the version policy keeps loaded in every worker.",
    },
    "loaded_versions": {
        "type": "array",
        "items": _INT,
        "description": (
            "The versions loaded in the worker that answered (X-Worker-Pid): the policy's "
            "plus those in its on-demand cache. Other workers may hold other cached versions."
        ),
    },
    "version_policy": {
        "type": "string",
        "description": "GAN_VERSION_POLICY: latest:N, all or specific:V1,V2,...",
    },
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
    "required": ["default", "version_cache", "models"],
    "properties": {
        "default": {"type": ["string", "null"], "description": "Model used when none is named."},
        "version_cache": {
            "type": "integer",
            "description": (
                "GAN_VERSION_CACHE: versions outside the policy each worker loads on demand "
                "and keeps, least recently used evicted; 0: pinning one is a 404."
            ),
        },
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
            "description": "model.json of every servable version, highest last.",
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


def _cache_headers() -> dict[str, Any]:
    return {
        "ETag": {
            "description": (
                "Strong entity tag of the response bytes: a hash of the model version (its "
                "sha256, name and version), the seeds or the float32 noise, the labels used and "
                "the format. The same request gives the same ETag from every worker."
            ),
            "schema": _STR,
        },
        "Cache-Control": {
            "description": (
                f"`{IMMUTABLE}` when the request names both `model` and `version` (that "
                f"response can never change), else `{REVALIDATE}`: the default model or "
                "version can change, so caches revalidate with the ETag."
            ),
            "schema": {"type": "string", "enum": [IMMUTABLE, REVALIDATE]},
        },
    }


IF_NONE_MATCH_PARAMETER: dict[str, Any] = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": (
        "Entity tags from earlier responses (RFC 9110: a comma-separated list, W/ tags "
        "compared weakly, * matches any). When one matches this request's ETag, GET and HEAD "
        "answer 304 Not Modified and POST 412 Precondition Failed, both without running the "
        "model. A value that does not follow the grammar is ignored. Checked only for a "
        "request that is otherwise valid: an invalid one gets its error."
    ),
    "schema": _STR,
}

_GENERATE_ERRORS = {
    "400": _error(
        "malformed_json: the body is not UTF-8 JSON; invalid_type: a field of the wrong type "
        "(a number with a zero fraction, 1.0, is an integer)."
    ),
    "404": _error(
        "unknown_model, unknown_version; version_not_loaded: a version on disk outside the "
        "version policy, with on-demand loading off (GAN_VERSION_CACHE=0)."
    ),
    "422": _error(
        "Semantically invalid: limits, ranges, unknown or repeated fields; and what depends on "
        "the model, which this document cannot state: noise rows of its latent size, labels "
        "for a conditional model only (required with noise), each below its class count."
    ),
    "503": _error(
        "not_ready: no model loaded; version_unavailable: the version is on disk but fails "
        "the service's checks when loaded."
    ),
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
    spec: dict[str, Any] = {
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
                "parameters": [IF_NONE_MATCH_PARAMETER],
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
                            "headers": _model_headers() | _cache_headers(),
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/GenerateResponse"}
                                },
                                "image/png": {"schema": _PNG},
                                "application/x-npy": {"schema": _BINARY},
                            },
                        },
                        **_GENERATE_ERRORS,
                        "412": _error(
                            "precondition_failed: If-None-Match matches the ETag of the response; "
                            "the client already holds its bytes. Nothing was generated."
                        ),
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
                            "headers": _model_headers() | _cache_headers(),
                            "content": {"image/png": {"schema": _PNG}},
                        },
                        "304": {
                            "description": (
                                "Not Modified: If-None-Match matches the ETag; no body, and "
                                "nothing was generated. HEAD answers the same way."
                            ),
                            "headers": _model_headers() | _cache_headers(),
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
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics, summed over every worker",
                    "responses": {
                        "200": {
                            "description": "The Prometheus text format 0.0.4.",
                            "content": {"text/plain": {"schema": _STR}},
                        }
                    },
                }
            },
            **_v2_paths(max_samples, max_body_bytes),
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
                **V2_SCHEMAS,
                "V2InferRequest": v2_infer_request_schema(max_samples),
            }
        },
    }
    from serve import interpolate, page  # they document their own routes (and import this)

    for document in (interpolate.document, page.document):
        document(spec, max_samples, max_body_bytes)
    _add_refusals(spec["paths"], max_body_bytes)
    return spec


def _refusals(error: Callable[[str], dict[str, Any]], max_body_bytes: int) -> dict[str, Any]:
    """What any operation can answer besides its own responses: the worker's refusals of a
    request it cannot take (before the app sees it), and a bug."""
    return {
        "400": error(
            "bad_request: the HTTP request itself is malformed (request line, method, headers, "
            "conflicting lengths, chunk framing)."
        ),
        "408": error(
            "request_timeout: the request did not arrive whole within GAN_CLIENT_TIMEOUT "
            "seconds; the connection is closed."
        ),
        "413": error(f"body_too_large: a body larger than {max_body_bytes} bytes."),
        "414": error("uri_too_long: a request line longer than 4,094 bytes."),
        "431": error(
            "headers_too_large: more than 100 header fields, or one longer than 8,190 bytes."
        ),
        "500": error(
            "internal_error: a bug in the service (logged with its traceback), never caused by "
            "what a client sent."
        ),
        "501": error(
            "not_implemented: a transfer coding other than chunked (unknown, or before the "
            "final chunked)."
        ),
        "503": error(
            "timeout: the request ran past GAN_TIMEOUT less a second, and its worker is "
            "replaced (Retry-After); not_ready: a worker with no model loaded had to take the "
            "connection."
        )
        | {"headers": {"Retry-After": {"description": "Seconds to wait (timeout).", "schema": _INT}}},
    }


def _add_refusals(paths: dict[str, Any], max_body_bytes: int) -> None:
    """Document the refusals on every operation (an operation's own 400 or 503 gets both
    causes)."""
    for path, item in paths.items():
        error = _v2_error if path == "/v2" or path.startswith("/v2/") else _error
        refusals = _refusals(error, max_body_bytes)
        for method in ("get", "put", "post", "delete", "patch"):
            operation = item.get(method)
            if operation is None:
                continue
            responses = dict(operation["responses"])
            for status, refusal in refusals.items():
                if status not in responses:
                    responses[status] = refusal
                elif status in ("400", "503"):
                    own = responses[status]
                    responses[status] = own | {
                        "description": f"{own['description']} Or {refusal['description']}",
                        "headers": own.get("headers", {}) | refusal.get("headers", {}),
                    }
            # A new operation: the /v2 ones are shared between the paths with and without a version.
            item[method] = operation | {"responses": dict(sorted(responses.items()))}


# --- Open Inference Protocol v2 (serve/v2.py) ----------------------------------------------

V2_HEADER_LENGTH = "Inference-Header-Content-Length"
_V2_TENSOR_METADATA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": _STR,
        "datatype": {"type": "string", "enum": ["FP32", "INT64"]},
        "shape": {"type": "array", "items": _INT, "description": "-1: any size (the batch)"},
    },
}
V2_SCHEMAS: dict[str, Any] = {
    "V2Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": _STR},
        "description": "Every error of a /v2 route (the protocol's shape, not Error).",
    },
    "V2ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {"name": _STR, "version": _STR, "extensions": {"type": "array", "items": _STR}},
    },
    "V2ModelMetadata": {
        "type": "object",
        "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {
            "name": _STR,
            "versions": {"type": "array", "items": _STR},
            "platform": {"type": "string", "enum": ["onnxruntime_onnx"]},
            "inputs": {"type": "array", "items": _V2_TENSOR_METADATA},
            "outputs": {"type": "array", "items": _V2_TENSOR_METADATA},
        },
    },
    "V2InferResponse": {
        "type": "object",
        "required": ["model_name", "model_version", "outputs"],
        "properties": {
            "model_name": _STR,
            "model_version": _STR,
            "id": {"type": "string", "description": "The request's id, when it gave one."},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "datatype", "shape"],
                    "properties": {
                        "name": {"type": "string", "enum": ["images"]},
                        "datatype": {"type": "string", "enum": ["FP32"]},
                        "shape": {"type": "array", "items": _INT, "description": "[n, C, H, W]"},
                        "parameters": {
                            "type": "object",
                            "properties": {"binary_data_size": _INT},
                        },
                        "data": {"type": "array", "items": {"type": "number"}},
                    },
                },
            },
        },
    },
}


FLOAT32_MAX = 3.4028234663852886e38
_UNSUPPORTED = {"not": {}, "description": "Not supported: a 400 says so."}


def _v2_input(name: str, datatype: str, shape: dict[str, Any], value: dict[str, Any]) -> dict[str, Any]:
    """One input tensor of an infer request: its name, datatype, shape and data as the server
    takes them. Whether an input fits the model (its latent size, whether it is conditional)
    and the data fit the shape, no schema states: the server answers 400 saying which."""
    return {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"const": name},
            "datatype": {"const": datatype},
            "shape": shape,
            "parameters": {
                "type": "object",
                "properties": {
                    "binary_data_size": {
                        "type": "integer",
                        "minimum": 0,
                        "maximum": INT64_MAX,
                        "description": "Bytes of this tensor after the JSON (binary extension); "
                        "no `data` then.",
                    },
                    "shared_memory_region": _UNSUPPORTED,
                    "shared_memory_byte_size": _UNSUPPORTED,
                    "shared_memory_offset": _UNSUPPORTED,
                },
            },
            "data": {
                "type": "array",
                "description": "Row-major values, flat or nested as the shape.",
                "items": {"oneOf": [value, {"type": "array", "items": value}]},
            },
        },
    }


def v2_infer_request_schema(max_samples: int) -> dict[str, Any]:
    """The JSON of a v2 infer request (the binary extension's JSON header, too)."""
    batch = {"type": "integer", "minimum": 1, "maximum": max_samples}
    z = _v2_input(
        "z",
        "FP32",
        {
            "type": "array",
            "prefixItems": [batch, {"type": "integer", "minimum": 1, "maximum": INT64_MAX}],
            "minItems": 2,
            "maxItems": 2,
            "description": "[n, latent_size]",
        },
        {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX},
    )
    labels = _v2_input(
        "labels",
        "INT64",
        {
            "type": "array",
            "prefixItems": [batch, {"const": 1}],
            "minItems": 1,
            "maxItems": 2,
            "description": "[n] or [n, 1]",
        },
        {"type": "integer", "minimum": 0, "maximum": INT64_MAX},
    )
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": _STR,
            "parameters": {
                "type": "object",
                "properties": {"binary_data_output": {"type": "boolean"}},
            },
            "inputs": {
                "type": "array",
                "minItems": 1,
                "maxItems": 2,
                "description": "z: FP32 [n, latent_size]; labels (conditional models only, "
                "and then required): INT64 [n] or [n, 1], each below the class count.",
                "items": {"oneOf": [z, labels]},
                "contains": {"properties": {"name": {"const": "z"}}},
                "minContains": 1,
                "maxContains": 1,
            },
            "outputs": {
                "type": "array",
                "maxItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"const": "images"},
                        "parameters": {
                            "type": "object",
                            "properties": {
                                "binary_data": {"type": "boolean"},
                                "classification": _UNSUPPORTED,
                            },
                        },
                    },
                },
            },
        },
    }


def _v2_error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/V2Error"}}},
    }


def _v2_paths(max_samples: int, max_body_bytes: int) -> dict[str, Any]:
    """The /v2 routes: the Open Inference Protocol v2 with the binary tensor data extension."""
    name = {"name": "name", "in": "path", "required": True, "schema": _STR}
    version = {"name": "version", "in": "path", "required": True, "schema": _STR}
    health = {"200": {"description": "True (empty body)."}}
    not_found = _v2_error("Unknown model or version; version on disk outside the policy.")
    unavailable = _v2_error("No model loaded, or the version fails its checks when loaded.")
    metadata = {
        "get": {
            "summary": "v2 model metadata",
            "responses": {"200": _json("V2ModelMetadata"), "404": not_found},
        }
    }
    ready = {
        "get": {
            "summary": "v2 model readiness: 200 when an infer request would run now",
            "responses": health | {"404": not_found, "503": unavailable},
        }
    }
    length_header = {"description": "Bytes of JSON before the binary tensors.", "schema": _INT}
    infer = {
        "post": {
            "summary": "v2 inference: images for z (and labels)",
            "parameters": [
                {
                    "name": V2_HEADER_LENGTH,
                    "in": "header",
                    "required": False,
                    "description": "With binary inputs: the length of the JSON request header; "
                    "the binary tensors follow it, in input order.",
                    "schema": {"type": "integer", "minimum": 0, "maximum": max_body_bytes},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/V2InferRequest"}},
                    "application/octet-stream": {
                        "schema": _BINARY
                        | {
                            "description": f"A V2InferRequest of {V2_HEADER_LENGTH} bytes, then "
                            "the binary input tensors (little-endian)."
                        }
                    },
                },
            },
            "responses": {
                "200": {
                    "description": "JSON data, or with binary outputs the JSON header "
                    f"({V2_HEADER_LENGTH} bytes) then the float32 images.",
                    "headers": _model_headers() | {V2_HEADER_LENGTH: length_header},
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/V2InferResponse"}
                        },
                        "application/octet-stream": {"schema": _BINARY},
                    },
                },
                "400": _v2_error(
                    "Malformed JSON or header length, wrong input name, datatype or shape, "
                    f"more than {max_samples} samples, non-finite z, labels out of range."
                ),
                "404": not_found,
                "413": _v2_error(f"Body larger than {max_body_bytes} bytes."),
                "415": _v2_error("A Content-Encoding other than identity."),
                "503": unavailable,
            },
        }
    }
    return {
        "/v2": {
            "get": {
                "summary": "v2 server metadata",
                "responses": {"200": _json("V2ServerMetadata")},
            }
        },
        "/v2/health/live": {"get": {"summary": "v2 liveness", "responses": health}},
        "/v2/health/ready": {
            "get": {"summary": "v2 readiness", "responses": health | {"503": unavailable}}
        },
        "/v2/models/{name}": {"parameters": [name], **metadata},
        "/v2/models/{name}/versions/{version}": {"parameters": [name, version], **metadata},
        "/v2/models/{name}/ready": {"parameters": [name], **ready},
        "/v2/models/{name}/versions/{version}/ready": {"parameters": [name, version], **ready},
        "/v2/models/{name}/infer": {"parameters": [name], **infer},
        "/v2/models/{name}/versions/{version}/infer": {"parameters": [name, version], **infer},
    }


# --- Authentication and rate limit (serve/auth.py, serve/ratelimit.py) ---------------------

_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
BEARER_SCHEME: dict[str, Any] = {
    "type": "http",
    "scheme": "bearer",
    "description": (
        "GAN_API_TOKEN or GAN_API_TOKEN_FILE: one of the configured tokens, as "
        "`Authorization: Bearer <token>`."
    ),
}


def add_security(
    spec: dict[str, Any], exempt: frozenset[str], auth: bool, rate_limit: str | None
) -> dict[str, Any]:
    """The document with the service's auth and rate limit as configured: the bearer scheme,
    ``security`` and a 401 on every operation outside the ``exempt`` paths when ``auth``, a 429
    with Retry-After on them when ``rate_limit`` (its description). Unchanged when both are off."""
    if not auth and rate_limit is None:
        return spec
    paths = {}
    for path, item in spec["paths"].items():
        if path in exempt:
            paths[path] = item
            continue
        error = _v2_error if path == "/v2" or path.startswith("/v2/") else _error
        extra: dict[str, Any] = {}
        if auth:
            extra["401"] = error(
                "missing_token: no Authorization: Bearer header; invalid_token: not one of the "
                "configured tokens. WWW-Authenticate names the realm (and the error)."
            ) | {"headers": {"WWW-Authenticate": {"schema": _STR}}}
        if rate_limit is not None:
            extra["429"] = error(f"rate_limited: more than {rate_limit} for this client.") | {
                "headers": {
                    "Retry-After": {"description": "Whole seconds to wait (>= 1).", "schema": _INT}
                }
            }
        item = dict(item)
        for method in _METHODS:
            if method in item:
                operation = item[method] | {"responses": item[method]["responses"] | extra}
                if auth:
                    operation["security"] = [{"bearer": []}]
                item[method] = operation
        paths[path] = item
    spec = spec | {"paths": paths}
    if auth:
        spec["components"] = spec["components"] | {"securitySchemes": {"bearer": BEARER_SCHEME}}
    return spec
