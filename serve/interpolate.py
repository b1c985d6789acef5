"""``POST /interpolate``: the images along the path between two seeds or two noise vectors.

The path is :func:`serve.latent.interpolate` (float32 slerp or lerp, defined exactly so a client
can rebuild it); the request is checked, run and encoded by the machinery of ``/generate``
(the registry, the generator's batching rule, the schema validator, serve.imaging), so a frame
is byte-identical to the ``/generate`` image of its noise, and the first and last frames to
those of the two seeds.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from flask import Blueprint, Response, request

from serve import latent
from serve.api import _labels, _noise, json_body, run_and_encode, state  # /generate's machinery
from serve.errors import ApiError
from serve.instrument import ENV_MODEL, ENV_VERSION
from serve.openapi import (
    _BINARY,
    _GENERATE_ERRORS,
    _PNG,
    NAME_HEADER,
    VERSION_HEADER,
    _error,
    _model_headers,
)
from serve.repository import ModelVersion
from serve.schema import generate_request_schema, validate

bp = Blueprint("interpolate", __name__)

DEFAULT_STEPS = 8
DEFAULT_METHOD = "slerp"


def interpolate_request_schema(max_samples: int) -> dict[str, Any]:
    """The JSON body of ``POST /interpolate``; its fields share ``/generate``'s schemas."""
    generate = generate_request_schema(max_samples)["properties"]
    return {
        "type": "object",
        "description": "Exactly one of `seeds` or `noise`: the two ends of the path.",
        "properties": {
            "model": generate["model"],
            "version": generate["version"],
            "seeds": {
                "type": "array",
                "items": generate["seeds"]["items"],
                "minItems": 2,
                "maxItems": 2,
                "description": "The two end seeds [a, b], each in [0, 2**63 - 1].",
            },
            "noise": {
                "type": "array",
                "items": generate["noise"]["items"],
                "minItems": 2,
                "maxItems": 2,
                "description": "The two end latent vectors, shape [2, latent size], finite float32.",
            },
            "steps": {
                "type": "integer",
                "minimum": 2,
                "maximum": max_samples,
                "default": DEFAULT_STEPS,
                "description": "Frames on the path, both ends included.",
                "x-error-codes": {"maximum": "too_many_samples"},
            },
            "method": {
                "type": "string",
                "enum": list(latent.INTERPOLATION_METHODS),
                "default": DEFAULT_METHOD,
                "description": "slerp: along the great circle between the two vectors (scaled); "
                "lerp: along the straight line.",
            },
            "labels": generate["labels"]
            | {
                "description": (
                    "Conditional models only: one class for every frame, or one per frame. "
                    "Optional with seeds (frames before t = 1/2 take class a % K, the rest "
                    "b % K); required with noise."
                )
            },
            "format": generate["format"]
            | {"description": "json: base64 PNGs; png: one strip of the frames; npy: float32 array."},
        },
        "additionalProperties": False,
        "oneOf": [{"required": ["seeds"]}, {"required": ["noise"]}],
        "x-message": "give exactly one of `seeds` (two seeds) or `noise` (two latent vectors)",
        "x-error-codes": {"oneOf": "invalid_source"},
    }


@functools.lru_cache(maxsize=8)
def _schema(max_samples: int) -> dict[str, Any]:
    return interpolate_request_schema(max_samples)


INTERPOLATE_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "version", "method", "steps", "shape", "seeds", "labels", "t", "images"],
    "properties": {
        "model": {"type": "string"},
        "version": {"type": "integer"},
        "method": {"type": "string", "enum": list(latent.INTERPOLATION_METHODS)},
        "steps": {"type": "integer"},
        "shape": {
            "type": "array",
            "items": {"type": "integer"},
            "description": "[steps, C, H, W] of the frames",
        },
        "seeds": {
            "type": ["array", "null"],
            "items": {"type": "integer"},
            "description": "The two end seeds; null for noise.",
        },
        "labels": {
            "type": ["array", "null"],
            "items": {"type": "integer"},
            "description": "The class of each frame; null for an unconditional model.",
        },
        "t": {
            "type": "array",
            "items": {"type": "number"},
            "description": "t_i = i / (steps - 1) of each frame, 0 first and 1 last.",
        },
        "images": {
            "type": "array",
            "description": "One base64-encoded PNG per frame, first end first.",
            "items": {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/png"},
        },
    },
}


@bp.post("/interpolate")
def interpolate() -> Response:
    """The frames of the path between two seeds or two noise vectors, in one of /generate's formats."""
    body = json_body("POST /interpolate")
    settings = state().settings
    validate(body, _schema(settings.max_samples))
    generator = state().registry.resolve(body.get("model"), body.get("version"))
    spec = generator.spec
    environ = request.environ  # for the access log
    environ[ENV_MODEL] = spec.name
    environ[ENV_VERSION] = spec.version
    steps = body.get("steps", DEFAULT_STEPS)
    method = body.get("method", DEFAULT_METHOD)
    fmt = body.get("format", "json")
    seeds: list[int] | None = body.get("seeds")
    if seeds is None:
        ends = _ends(body["noise"], spec.latent_size)
    else:
        ends = latent.noise_for_seeds(seeds, spec.latent_size)
    labels = _frame_labels(body.get("labels"), steps, spec, seeds)

    z = latent.interpolate(ends[0], ends[1], steps, method)
    fields = {} if fmt != "json" else {
        "model": spec.name,
        "version": spec.version,
        "method": method,
        "steps": steps,
        "shape": [steps, *spec.image_shape],
        "seeds": seeds,
        "labels": None if labels is None else labels.tolist(),
        "t": latent.interpolation_times(steps),
    }
    headers = {NAME_HEADER: spec.name, VERSION_HEADER: str(spec.version)}
    stem = f"{spec.name}-v{spec.version}-{method}"
    # The frames in one PNG strip: a row of ``steps`` columns.
    return run_and_encode(generator, z, labels, fmt, stem, headers, fields, ncol=steps)


def _ends(rows: list[list[float]], size: int) -> np.ndarray:
    """The two noise vectors of a request, float32 [2, size]; /generate's finiteness check."""
    lengths = [len(row) for row in rows]
    if lengths != [size, size]:
        raise ApiError(
            422,
            "invalid_noise_shape",
            f"noise must have shape [2, {size}] (two latent vectors of the model's size), got "
            + (f"[2, {lengths[0]}]" if lengths[0] == lengths[1] else "rows of unequal length"),
        )
    return _noise(rows, size, 2)


def _frame_labels(
    labels: int | list[int] | None, steps: int, spec: ModelVersion, seeds: list[int] | None
) -> np.ndarray | None:
    """The class of each frame: given, or with seeds and none given, a's class then b's."""
    if labels is None and seeds is not None and spec.classes is not None:
        count = len(spec.classes)
        first, last = (latent.label_for_seed(s, count) for s in seeds)
        # t_i < 1/2, that is 2 i < steps - 1: the first seed's class; from t = 1/2 on, the last's.
        return np.array([first if 2 * i < steps - 1 else last for i in range(steps)], dtype=np.int64)
    return _labels(labels, steps, spec, None)


def document(spec: dict[str, Any], max_samples: int, max_body_bytes: int) -> None:
    """Add ``POST /interpolate`` and its schemas to the OpenAPI document ``spec``."""
    spec["components"]["schemas"] |= {
        "InterpolateRequest": interpolate_request_schema(max_samples),
        "InterpolateResponse": INTERPOLATE_RESPONSE_SCHEMA,
    }
    spec["paths"]["/interpolate"] = {
        "post": {
            "summary": "Images along the path between two seeds or two noise vectors",
            "description": (
                "Frame i of `steps` has the noise a_i * z0 + b_i * z1 in float32 arithmetic, "
                "t_i = i / (steps - 1); the weights are computed in float64 and rounded to "
                "float32 once: lerp a_i = 1 - t_i, b_i = t_i; slerp a_i = sin((1 - t_i) w) / "
                "sin w, b_i = sin(t_i w) / sin w with w the angle between z0 and z1 (lerp's "
                f"weights when sin w < {latent.SLERP_MIN_SIN} or a vector is zero). The first "
                "frame is z0 and the last z1 exactly, so their images are those of /generate."
            ),
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/InterpolateRequest"}
                    }
                },
            },
            "responses": {
                "200": {
                    "description": (
                        "json: base64 PNGs; png: one strip of the frames in a row, 2 px "
                        "padding; npy: float32 [steps, C, H, W] in [0, 1]."
                    ),
                    "headers": _model_headers(),
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/InterpolateResponse"}
                        },
                        "image/png": {"schema": _PNG},
                        "application/x-npy": {"schema": _BINARY},
                    },
                },
                **_GENERATE_ERRORS,
                "413": _error(f"Body larger than {max_body_bytes} bytes."),
                "415": _error("Content-Type is not application/json."),
            },
        }
    }
