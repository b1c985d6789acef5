"""Responses checked against the served /openapi.json with jsonschema, not the service's own validator."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient
from jsonschema import Draft202012Validator


def _check(document: dict[str, Any], schema: dict[str, Any], body: Any) -> None:
    """Validate ``body`` against ``schema``, its $refs resolved in ``document``."""
    root = {"components": document.get("components", {}), **schema}  # local $refs resolve in root
    Draft202012Validator.check_schema(root)
    errors = [e.message for e in Draft202012Validator(root).iter_errors(body)]
    assert not errors, f"body does not match the document: {errors}"


def assert_matches_openapi(client: FlaskClient, response: Any, path: str, method: str = "get") -> None:
    """The JSON ``response`` of ``method`` ``path`` (as the document spells it, with {name} and the
    like) is a status the document declares for that operation, and its body matches the schema."""
    document = client.get("/openapi.json").json
    responses = document["paths"][path][method.lower()]["responses"]
    status = str(response.status_code)
    declared = responses.get(status) or responses.get(f"{status[0]}XX") or responses.get("default")
    assert declared is not None, f"{method.upper()} {path}: {status} is not in the document"
    _check(document, declared["content"]["application/json"]["schema"], response.json)


def assert_matches_component(client: FlaskClient, body: Any, name: str) -> None:
    """``body`` matches the served document's ``components/schemas/<name>``."""
    document = client.get("/openapi.json").json
    assert name in document["components"]["schemas"], f"no schema {name} in the document"
    _check(document, {"$ref": f"#/components/schemas/{name}"}, body)


def assert_matches_schema(body: Any, schema: dict[str, Any]) -> None:
    """``body`` matches the self-contained JSON ``schema`` (jsonschema's 2020-12 validator)."""
    _check({}, schema, body)


def assert_matches_schemas(body: Any, schemas: dict[str, Any], name: str) -> None:
    """``body`` matches ``schemas[name]``, where ``schemas`` is a document's
    ``components/schemas`` (its $refs between them resolved)."""
    assert name in schemas, f"no schema {name}"
    _check({"components": {"schemas": schemas}}, {"$ref": f"#/components/schemas/{name}"}, body)
