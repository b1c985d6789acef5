"""The OpenAPI document: valid OpenAPI 3.1, and built from the schemas that validate requests."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from serve.schema import generate_query_schema, generate_request_schema


def test_document_is_valid_openapi(client: FlaskClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.json["openapi"].startswith("3.1")
    validate(response.json)


def test_document_uses_the_request_validation_schemas(app: Flask, client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    state = app.extensions["gan"]
    assert spec["components"]["schemas"]["GenerateRequest"] == state.request_schema
    assert state.request_schema == generate_request_schema(16)
    parameters = spec["paths"]["/generate"]["get"]["parameters"]
    query = generate_query_schema(16)
    assert {p["name"]: p["schema"] for p in parameters} == query["properties"]
    assert [p["name"] for p in parameters if p["required"]] == query["required"]


def test_document_shows_the_configured_limit(client: FlaskClient) -> None:
    schema = client.get("/openapi.json").json["components"]["schemas"]["GenerateRequest"]
    assert schema["properties"]["seeds"]["maxItems"] == 16
    assert schema["properties"]["n"]["maximum"] == 16


def test_every_route_is_documented(app: Flask, client: FlaskClient) -> None:
    paths = client.get("/openapi.json").json["paths"]
    for rule in app.url_map.iter_rules():
        path = rule.rule.replace("<", "{").replace(">", "}")
        assert path in paths, path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in paths[path], (method, path)
