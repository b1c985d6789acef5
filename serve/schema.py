"""Request schemas in JSON Schema form, and a validator for the subset of keywords they use.

The same dicts validate requests and appear in ``/openapi.json``, so the two cannot drift.
Type errors are 400s; every other violation is a 422. A schema node may name the error code
of a keyword in ``x-error-codes`` and the message of a failed ``oneOf`` in ``x-message``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from serve import latent
from serve.errors import ApiError

FORMATS = ("json", "png", "npy")
_INT_RE = re.compile(r"-?[0-9]{1,40}\Z")  # bounded: int() refuses thousands of digits
_ARTICLES = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "a boolean",
    "array": "an array",
    "object": "an object",
    "null": "null",
}


def _seed() -> dict[str, Any]:
    return {
        "type": "integer",
        "minimum": latent.SEED_MIN,
        "maximum": latent.SEED_MAX,
        "x-error-codes": {"minimum": "seed_out_of_range", "maximum": "seed_out_of_range"},
    }


def _label() -> dict[str, Any]:
    # The upper bound depends on the model, so it is checked with the model in hand.
    return {"type": "integer", "minimum": 0, "x-error-codes": {"minimum": "label_out_of_range"}}


def _common(max_samples: int) -> dict[str, dict[str, Any]]:
    """Properties shared by the POST body and the GET query."""
    return {
        "model": {
            "type": "string",
            "description": "Model name; default: GAN_DEFAULT_MODEL, else the first by name.",
        },
        "version": {
            "type": "integer",
            "minimum": 1,
            "description": "Model version; default: the highest the version policy loads.",
        },
        "seed": _seed() | {"description": "First seed: the request asks for seed .. seed+n-1."},
        "n": {
            "type": "integer",
            "minimum": 1,
            "maximum": max_samples,
            "default": 1,
            "description": "Number of consecutive seeds from `seed`.",
            "x-error-codes": {"maximum": "too_many_samples"},
        },
        "labels": {
            "description": (
                "Conditional models only: one class label per sample, or one for all. "
                "Optional with seeds (seed s then takes class s % num_classes); required with noise."
            ),
            "oneOf": [
                _label(),
                {
                    "type": "array",
                    "items": _label(),
                    "minItems": 1,
                    "maxItems": max_samples,
                    "x-error-codes": {"maxItems": "too_many_samples"},
                },
            ],
        },
    }


def generate_request_schema(max_samples: int) -> dict[str, Any]:
    """The JSON body of ``POST /generate``."""
    common = _common(max_samples)
    return {
        "type": "object",
        "description": "Exactly one of `seeds`, `seed` (with optional `n`) or `noise`.",
        "properties": {
            "model": common["model"],
            "version": common["version"],
            "seeds": {
                "type": "array",
                "items": _seed(),
                "minItems": 1,
                "maxItems": max_samples,
                "description": "One sample per seed, each in [0, 2**63 - 1].",
                "x-error-codes": {"maxItems": "too_many_samples"},
            },
            "seed": common["seed"],
            "n": common["n"],
            "noise": {
                "type": "array",
                "items": {"type": "array", "items": {"type": "number"}},
                "minItems": 1,
                "maxItems": max_samples,
                "description": "Latent vectors, shape [n, latent size], finite float32 values.",
                "x-error-codes": {"maxItems": "too_many_samples"},
            },
            "labels": common["labels"],
            "format": {
                "type": "string",
                "enum": list(FORMATS),
                "default": "json",
                "description": "json: base64 PNGs; png: one grid image; npy: float32 array.",
            },
        },
        "additionalProperties": False,
        "dependentRequired": {"n": ["seed"]},
        "oneOf": [{"required": ["seeds"]}, {"required": ["seed"]}, {"required": ["noise"]}],
        "x-message": "give exactly one of `seeds`, `seed` (with optional `n`) or `noise`",
        "x-error-codes": {"oneOf": "invalid_source"},
    }


def generate_query_schema(max_samples: int) -> dict[str, Any]:
    """The query of ``GET /generate`` (labels as ``labels=3`` or ``labels=1,2,3``)."""
    common = _common(max_samples)
    return {
        "type": "object",
        "properties": {k: common[k] for k in ("seed", "n", "model", "version", "labels")},
        "required": ["seed"],
        "additionalProperties": False,
    }


def parse_json(data: bytes) -> Any:
    """Parse a request body; duplicate keys are a 422, anything not JSON a 400."""

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ApiError(422, "duplicate_field", f"field {key!r} appears more than once")
            seen.add(key)
        return dict(pairs)

    try:
        return json.loads(data, object_pairs_hook=unique)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {e}") from None


def parse_query(args: Mapping[str, list[str]], schema: dict[str, Any]) -> dict[str, Any]:
    """Query parameters to typed values as ``schema`` declares them (arrays comma-separated)."""
    properties = schema["properties"]
    values: dict[str, Any] = {}
    for key, raw in args.items():
        if len(raw) > 1:
            raise ApiError(422, "duplicate_field", f"parameter {key!r} appears more than once")
        values[key] = _from_text(raw[0], properties.get(key, {}))
    return values


def _from_text(raw: str, schema: dict[str, Any]) -> Any:
    """One query value, converted when it has the shape of a type the schema allows."""
    kinds = {schema.get("type")} | {branch.get("type") for branch in schema.get("oneOf", [])}
    if "array" in kinds and "," in raw:
        return [int(p) if _INT_RE.match(p) else p for p in raw.split(",")]
    if "integer" in kinds and _INT_RE.match(raw):
        return int(raw)
    return raw


def validate(instance: Any, schema: dict[str, Any], path: str = "") -> None:
    """Raise ApiError for the first way ``instance`` violates ``schema``."""
    kind = schema.get("type")
    if kind is not None and not _is_type(instance, kind):
        raise ApiError(
            400, "invalid_type", f"{_where(path)} must be {_wanted(kind)}, got {_json_type(instance)}"
        )
    if "enum" in schema and instance not in schema["enum"]:
        choices = ", ".join(json.dumps(c) for c in schema["enum"])
        _fail(schema, "enum", "invalid_value", f"{_where(path)} must be one of {choices}")
    if "minimum" in schema and instance < schema["minimum"]:
        _fail(schema, "minimum", "out_of_range", f"{_where(path)} must be >= {schema['minimum']}")
    if "maximum" in schema and instance > schema["maximum"]:
        _fail(schema, "maximum", "out_of_range", f"{_where(path)} must be <= {schema['maximum']}")
    if isinstance(instance, list):
        _validate_array(instance, schema, path)
    if isinstance(instance, dict):
        _validate_object(instance, schema, path)
    if "oneOf" in schema:
        _validate_one_of(instance, schema, path)


_PLAIN_ITEMS = {"number": (int, float), "integer": (int,)}


def _validate_array(instance: list[Any], schema: dict[str, Any], path: str) -> None:
    count = len(instance)
    if count < schema.get("minItems", 0):
        _fail(schema, "minItems", "too_few_items",
              f"{_where(path)} must have at least {schema['minItems']} items, got {count}")
    if "maxItems" in schema and count > schema["maxItems"]:
        _fail(schema, "maxItems", "too_many_items",
              f"{_where(path)} must have at most {schema['maxItems']} items, got {count}")
    items = schema.get("items")
    if items is None:
        return
    # Fast path for arrays of plain numbers (a 64 x 100 noise body is 6,400 of them): one
    # pass over exact types; JSON gives int and float, never their subclasses but bool.
    plain = _PLAIN_ITEMS.get(items["type"]) if items.keys() == {"type"} else None
    if plain is not None and all(type(item) in plain for item in instance):
        return
    for i, item in enumerate(instance):
        validate(item, items, f"{path}[{i}]")


def _validate_object(instance: dict[str, Any], schema: dict[str, Any], path: str) -> None:
    properties = schema.get("properties", {})
    if schema.get("additionalProperties") is False:
        for key in instance:
            if key not in properties:
                _fail(schema, "additionalProperties", "unknown_field",
                      f"unknown field {key!r}{_in(path)}; allowed: {', '.join(properties)}")
    for key, value in instance.items():
        if key in properties:
            validate(value, properties[key], f"{path}.{key}" if path else key)
    for key in schema.get("required", []):
        if key not in instance:
            _fail(schema, "required", "missing_field", f"missing field {key!r}{_in(path)}")
    for key, needed in schema.get("dependentRequired", {}).items():
        for other in needed:
            if key in instance and other not in instance:
                _fail(schema, "dependentRequired", "missing_field",
                      f"field {key!r} needs field {other!r}{_in(path)}")


def _validate_one_of(instance: Any, schema: dict[str, Any], path: str) -> None:
    branches = schema["oneOf"]
    passing = sum(_passes(instance, branch) for branch in branches)
    if passing == 1:
        return
    typed = [b for b in branches if "type" not in b or _is_type(instance, b["type"])]
    if not typed:
        wanted = " or ".join(_wanted(b["type"]) for b in branches)
        raise ApiError(
            400, "invalid_type", f"{_where(path)} must be {wanted}, got {_json_type(instance)}"
        )
    if passing == 0 and len(typed) == 1:
        validate(instance, typed[0], path)  # report the one applicable branch's own error
    message = schema.get("x-message", f"{_where(path)} must match exactly one alternative")
    _fail(schema, "oneOf", "invalid_value", message)


def _passes(instance: Any, schema: dict[str, Any]) -> bool:
    try:
        validate(instance, schema)
    except ApiError:
        return False
    return True


def _fail(schema: dict[str, Any], keyword: str, code: str, message: str) -> None:
    raise ApiError(422, schema.get("x-error-codes", {}).get(keyword, code), message)


def _is_type(value: Any, kind: str | list[str]) -> bool:
    if isinstance(kind, list):
        return any(_is_type(value, k) for k in kind)
    if isinstance(value, bool):
        return kind == "boolean"
    checks: dict[str, Any] = {
        "boolean": bool,
        "integer": int,
        "number": (int, float),
        "string": str,
        "array": list,
        "object": dict,
        "null": type(None),
    }
    return isinstance(value, checks[kind])


def _wanted(kind: str | list[str]) -> str:
    kinds = kind if isinstance(kind, list) else [kind]
    return " or ".join(_ARTICLES[k] for k in kinds)


def _json_type(value: Any) -> str:
    for kind in ("boolean", "integer", "number", "string", "array", "object", "null"):
        if _is_type(value, kind):
            return kind
    return type(value).__name__


def _where(path: str) -> str:
    return path or "request body"


def _in(path: str) -> str:
    return f" in {path}" if path else ""
