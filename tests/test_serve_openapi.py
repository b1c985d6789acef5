"""The OpenAPI document: valid OpenAPI 3.1, and built from the schemas that validate requests."""

from __future__ import annotations

import json

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
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


REFUSALS = {"400", "408", "413", "414", "431", "500", "501", "503"}  # the worker's, and a bug


def test_every_operation_documents_the_refusals(client: FlaskClient) -> None:
    for path, item in client.get("/openapi.json").json["paths"].items():
        error = "V2Error" if path == "/v2" or path.startswith("/v2/") else "Error"
        for method, operation in item.items():
            if method == "parameters":
                continue
            responses = operation["responses"]
            assert REFUSALS <= responses.keys(), (method, path, sorted(responses))
            for status in REFUSALS:
                schema = responses[status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": f"#/components/schemas/{error}"}, (method, path, status)


# Bodies whose validity does not depend on the model (the default, unconditional ``tiny``).
AGREEMENT_BODIES = [
    {"seed": 0}, {"seed": 0.0}, {"seed": 1e2}, {"seed": 1.5}, {"seed": True}, {"seed": "1"},
    {"seed": None}, {"seed": -1}, {"seed": 2**63 - 1}, {"seed": 2**63}, {"seeds": [1.0, 2]},
    {"seeds": []}, {"seed": 1, "n": 2.0}, {"seed": 1, "n": 0}, {"seed": 1, "version": 1.0},
    {"seed": 1, "version": 0}, {"seed": 1, "format": "png"}, {"seed": 1, "format": "gif"},
    {"seed": 1, "extra": 1}, {"n": 1}, {}, {"noise": []}, {"noise": [[]]}, {"noise": [[True]]},
    {"seed": 1, "model": 1}, {"seed": 1, "labels": "x"}, {"seed": 1, "labels": []},
]


@pytest.mark.parametrize("body", AGREEMENT_BODIES, ids=[json.dumps(b) for b in AGREEMENT_BODIES])
def test_document_and_server_agree(client: FlaskClient, body: dict) -> None:
    spec = client.get("/openapi.json").json
    schema = spec["components"]["schemas"]["GenerateRequest"]
    valid = Draft202012Validator(schema).is_valid(body)
    response = client.post("/generate", json=body)
    assert (response.status_code == 200) == valid, (valid, response.json)
