"""Request schemas in JSON Schema form, and a validator for the subset of keywords they use.

The same dicts validate requests and appear in ``/openapi.json``, so the two cannot drift.
Type errors are 400s; every other violation is a 422. A schema node may name the error code
of a keyword in ``x-error-codes`` and the message of a failed ``oneOf`` in ``x-message``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from serve import latent
from serve.errors import ApiError, shown

FORMATS = ("json", "png", "npy")
INT64_MAX = 2**63 - 1
# A number in a query string: JSON's number syntax (leading zeros allowed, as int() does).
_NUMBER_RE = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?\Z")
_INT_DIGITS = 1000  # longer integers are out of range of every field: not worth int()
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
    # The model's class count, the real upper bound, is checked with the model in hand; labels
    # are int64 tensors.
    return {
        "type": "integer",
        "minimum": 0,
        "maximum": INT64_MAX,
        "x-error-codes": {"minimum": "label_out_of_range", "maximum": "label_out_of_range"},
    }


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
            "maximum": INT64_MAX,
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
                # A row's length is the model's latent size, which differs between models.
                "items": {
                    "type": "array",
                    "items": {"type": "number"},
                    "minItems": 1,
                    "x-error-codes": {"minItems": "invalid_noise_shape"},
                },
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


class JsonBodyError(ValueError):
    """A request body that cannot be read as JSON; the message says why, in a client's terms."""


def load_json(data: bytes, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    """A request body as JSON: UTF-8 (a leading byte order mark is ignored, as RFC 8259 allows).

    ``NaN`` and ``Infinity`` are read as numbers, for the fields that check for finite values
    to name. Integers of more digits than Python converts become infinities, out of range of
    every field. Raises JsonBodyError.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JsonBodyError(
            f"is not valid JSON: not UTF-8 (byte {e.start} cannot be there); send JSON in UTF-8"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as e:
        raise JsonBodyError(f"is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise JsonBodyError("nests arrays or objects too deeply to be read") from None
    except ValueError:
        pass  # an integer literal of more digits than int() converts; read again, slowly
    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook, parse_int=_parse_long_int)
    except RecursionError:
        raise JsonBodyError("nests arrays or objects too deeply to be read") from None
    except ValueError as e:
        raise JsonBodyError("is not valid JSON") from e


def _parse_long_int(text: str) -> int | float:
    """An integer literal; one too long for int() is beyond any range: an infinity."""
    if len(text) > _INT_DIGITS:
        return -math.inf if text.startswith("-") else math.inf
    return int(text)


def parse_json(data: bytes) -> Any:
    """Parse a request body; duplicate keys are a 422, anything not JSON a 400."""

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ApiError(422, "duplicate_field", f"field {shown(key)} appears more than once")
            seen.add(key)
        return dict(pairs)

    try:
        return load_json(data, unique)
    except JsonBodyError as e:
        raise ApiError(400, "malformed_json", f"request body {e}") from None


def parse_query(args: Mapping[str, list[str]], schema: dict[str, Any]) -> dict[str, Any]:
    """Query parameters to typed values as ``schema`` declares them (arrays comma-separated)."""
    properties = schema["properties"]
    values: dict[str, Any] = {}
    for key, raw in args.items():
        prop = properties.get(key, {})
        if len(raw) > 1:
            if not _takes_array(prop):
                raise ApiError(
                    422, "duplicate_field", f"parameter {shown(key)} appears more than once"
                )
            # An array also arrives as the parameter repeated (labels=1&labels=2), as many
            # clients send a list: the same as labels=1,2.
            raw = [",".join(raw)]
        values[key] = _from_text(raw[0], prop)
    return values


def _takes_array(schema: dict[str, Any]) -> bool:
    kinds = {schema.get("type")} | {branch.get("type") for branch in schema.get("oneOf", [])}
    return "array" in kinds


def _from_text(raw: str, schema: dict[str, Any]) -> Any:
    """One query value, converted when it has the shape of a type the schema allows."""
    kinds = {schema.get("type")} | {branch.get("type") for branch in schema.get("oneOf", [])}
    if "array" in kinds and "," in raw:
        return [_number(p) for p in raw.split(",")]
    if "integer" in kinds:
        return _number(raw)
    return raw


def _number(text: str) -> Any:
    """A query value written as a JSON number, as that number (its text otherwise)."""
    match = _NUMBER_RE.match(text)
    if match is None:
        return text
    if match.group(1) is None and match.group(2) is None:  # digits only: an integer
        if len(text.lstrip("-")) > _INT_DIGITS:
            return _parse_long_int(text)
        return int(text)
    return float(text)  # 1.0 and 1e3 are integers to the validator, 1.5 is not


def validate(instance: Any, schema: dict[str, Any], path: str = "") -> Any:
    """Raise ApiError for the first way ``instance`` violates ``schema``; return ``instance``.

    As in JSON Schema, a number with a zero fraction (``1.0``, ``1e3``) is an integer: where
    the schema takes an integer, such a number is returned (and replaced, inside arrays and
    objects) as a Python int.
    """
    kind = schema.get("type")
    if kind is not None:
        if not _is_type(instance, kind):
            raise ApiError(
                400,
                "invalid_type",
                f"{_where(path)} must be {_wanted(kind)}, got {_json_type(instance)}",
            )
        if type(instance) is float and kind == "integer" and math.isfinite(instance):
            instance = int(instance)
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
        return _validate_one_of(instance, schema, path)
    return instance


_PLAIN_ITEMS = {"number": (int, float), "integer": (int,)}


def _validate_array(instance: list[Any], schema: dict[str, Any], path: str) -> None:
    count = len(instance)
    if count < schema.get("minItems", 0):
        _fail(schema, "minItems", "too_few_items",
              f"{_where(path)} must have at least {_items(schema['minItems'])}, got {count}")
    if "maxItems" in schema and count > schema["maxItems"]:
        _fail(schema, "maxItems", "too_many_items",
              f"{_where(path)} must have at most {_items(schema['maxItems'])}, got {count}")
    items = schema.get("items")
    if items is None:
        return
    # Fast path for arrays of plain numbers (a 64 x 100 noise body is 6,400 of them): one
    # pass over exact types; JSON gives int and float, never their subclasses but bool.
    plain = _PLAIN_ITEMS.get(items["type"]) if items.keys() == {"type"} else None
    if plain is not None and all(type(item) in plain for item in instance):
        return
    for i, item in enumerate(instance):
        instance[i] = validate(item, items, f"{path}[{i}]")


def _validate_object(instance: dict[str, Any], schema: dict[str, Any], path: str) -> None:
    properties = schema.get("properties", {})
    if schema.get("additionalProperties") is False:
        for key in instance:
            if key not in properties:
                _fail(schema, "additionalProperties", "unknown_field",
                      f"unknown field {shown(key)}{_in(path)}; allowed: {', '.join(properties)}")
    for key, value in instance.items():
        if key in properties:
            instance[key] = validate(value, properties[key], f"{path}.{key}" if path else key)
    for key in schema.get("required", []):
        if key not in instance:
            _fail(schema, "required", "missing_field", f"missing field {key!r}{_in(path)}")
    for key, needed in schema.get("dependentRequired", {}).items():
        for other in needed:
            if key in instance and other not in instance:
                _fail(schema, "dependentRequired", "missing_field",
                      f"field {key!r} needs field {other!r}{_in(path)}")


def _validate_one_of(instance: Any, schema: dict[str, Any], path: str) -> Any:
    """``instance`` as the one branch that it passes returns it; else the branch's error."""
    branches = schema["oneOf"]
    results = []
    for branch in branches:
        try:
            results.append(validate(instance, branch))
        except ApiError:
            pass
    if len(results) == 1:
        return results[0]
    typed = [b for b in branches if "type" not in b or _is_type(instance, b["type"])]
    if not typed:
        wanted = " or ".join(_wanted(b["type"]) for b in branches)
        raise ApiError(
            400, "invalid_type", f"{_where(path)} must be {wanted}, got {_json_type(instance)}"
        )
    if not results and len(typed) == 1:
        validate(instance, typed[0], path)  # report the one applicable branch's own error
    message = schema.get("x-message", f"{_where(path)} must match exactly one alternative")
    _fail(schema, "oneOf", "invalid_value", message)


def _fail(schema: dict[str, Any], keyword: str, code: str, message: str) -> None:
    raise ApiError(422, schema.get("x-error-codes", {}).get(keyword, code), message)


def is_integer(value: Any) -> bool:
    """An integer as JSON Schema has it: an int, or a float with a zero fraction. An
    infinity counts (it stands for a literal too long to convert), so it fails ranges."""
    if type(value) is float:
        return value.is_integer() or math.isinf(value)
    return isinstance(value, int) and not isinstance(value, bool)


def _is_type(value: Any, kind: str | list[str]) -> bool:
    if isinstance(kind, list):
        return any(_is_type(value, k) for k in kind)
    if isinstance(value, bool):
        return kind == "boolean"
    if kind == "integer":
        return is_integer(value)
    checks: dict[str, Any] = {
        "boolean": bool,
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
    """The JSON type of a value, as an error message names it (``1.0``: a number)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    for kind in ("number", "string", "array", "object", "null"):
        if _is_type(value, kind):
            return kind
    return "value"


def _items(count: int) -> str:
    return "1 item" if count == 1 else f"{count} items"


def _where(path: str) -> str:
    return path or "request body"


def _in(path: str) -> str:
    return f" in {path}" if path else ""
