"""Request ids on every response, and one JSON access line per request through gunicorn."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient
from helpers.server import assert_start_refused, start_gunicorn
from helpers.tiny_models import write_repository

from serve.instrument import request_id

HEX32 = re.compile(r"[0-9a-f]{32}\Z")
FIELDS = {"time", "request_id", "method", "path", "query", "status", "latency_ms", "model",
          "version", "images", "bytes", "remote", "pid"}
MALICIOUS = ['a b', 'x"}{"status":1', "x" * 129, "", "é", "a,b", "../../etc/passwd;rm"]


@pytest.mark.parametrize("good", ["abc", "A-Za-z0-9._-", "1" * 128, "0f" * 16])
def test_safe_incoming_ids_are_kept(good: str) -> None:
    assert request_id(good) == good


@pytest.mark.parametrize("bad", [*MALICIOUS, "ok\n", "ok\r\nX-Evil: 1", None])
def test_other_ids_are_replaced(bad: str | None) -> None:
    assert HEX32.match(request_id(bad))


def test_every_app_response_carries_a_request_id(client: FlaskClient) -> None:
    responses = [
        client.get("/healthz"),
        client.post("/generate", json={"seeds": [1]}),
        client.get("/nope"),  # Flask's 404
        client.delete("/generate"),  # Flask's 405
        client.post("/generate", data=b"{" * 70000, content_type="application/json"),  # 413
        client.post("/generate", json={"seeds": []}),  # the app's 422
    ]
    assert [r.status_code for r in responses] == [200, 200, 404, 405, 413, 422]
    ids = [r.headers["X-Request-ID"] for r in responses]
    assert all(HEX32.match(i) for i in ids) and len(set(ids)) == len(ids)
    kept = client.get("/nope", headers={"X-Request-ID": "trace.42_A-b"})
    assert kept.headers["X-Request-ID"] == "trace.42_A-b"
    replaced = client.get("/healthz", headers={"X-Request-ID": 'x"}{'})
    assert HEX32.match(replaced.headers["X-Request-ID"])


def json_lines(log: str) -> list[dict]:
    """Every JSON access line of a gunicorn log (the error log lines start with '[')."""
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[requests.Response], list[dict]]:
    """Requests to a one-worker gunicorn (default GAN_LOG_FORMAT), and its access lines."""
    tmp = tmp_path_factory.mktemp("request-logs")
    server = start_gunicorn(tmp, GAN_MODELS_DIR=str(write_repository(tmp / "models")),
                            GAN_WORKERS="1", GAN_DEFAULT_MODEL="tiny", GAN_MAX_BODY_BYTES="4096")
    try:
        url = server.url
        responses = [
            requests.post(f"{url}/generate", json={"seeds": [1, 2, 3]}, timeout=30,
                          headers={"X-Request-ID": "client-id.1"}),
            requests.get(f"{url}/generate?model=cond&seed=5&n=4", timeout=30),
            requests.get(f"{url}/healthz?probe=1", timeout=30),
            requests.get(f"{url}/nope", timeout=30),
            requests.delete(f"{url}/generate", timeout=30),
            *[requests.get(f"{url}/healthz", headers={"X-Request-ID": bad}, timeout=30)
              for bad in MALICIOUS],
        ]
        # Refused by the worker before the app (a body over GAN_MAX_BODY_BYTES): a request
        # id too, though no access line (the app never saw the request).
        responses.append(requests.post(f"{url}/generate", data=b"x" * 5000, timeout=30,
                                       headers={"Content-Type": "application/json"}))
    finally:
        log = server.stop()
    return responses, json_lines(log)


def test_one_json_line_per_request(logged: tuple[list[requests.Response], list[dict]]) -> None:
    responses, lines = logged
    for line in lines:
        assert set(line) == FIELDS
    by_id = {line["request_id"]: line for line in lines}
    for response in responses[:-1]:
        rid = response.headers["X-Request-ID"]
        line = by_id[rid]  # the response's id names its log line
        assert line["status"] == response.status_code
        assert line["bytes"] == len(response.content)
        assert line["pid"] == int(response.headers["X-Worker-Pid"])
        assert line["latency_ms"] >= 0
        assert sum(1 for other in lines if other["request_id"] == rid) == 1

    post, get, health, missing, wrong_method = (by_id[r.headers["X-Request-ID"]] for r in responses[:5])
    assert post["request_id"] == "client-id.1"  # an incoming safe id is kept
    assert (post["method"], post["path"], post["query"]) == ("POST", "/generate", None)
    assert (post["model"], post["version"], post["images"]) == ("tiny", 2, 3)
    assert (get["method"], get["query"], get["model"], get["version"], get["images"]) == (
        "GET", "model=cond&seed=5&n=4", "cond", 1, 4)
    assert (health["path"], health["query"], health["images"], health["model"]) == (
        "/healthz", "probe=1", 0, None)
    assert (missing["status"], wrong_method["status"], wrong_method["method"]) == (404, 405, "DELETE")
    for response in responses[5:-1]:  # malicious incoming ids were replaced
        assert HEX32.match(response.headers["X-Request-ID"])
    refused = responses[-1]
    assert refused.status_code == 413 and HEX32.match(refused.headers["X-Request-ID"])
    assert refused.headers["X-Request-ID"] not in by_id


def test_text_format_keeps_gunicorn_lines(tmp_path: Path) -> None:
    server = start_gunicorn(tmp_path, GAN_MODELS_DIR=str(write_repository(tmp_path / "models")),
                            GAN_WORKERS="1", GAN_LOG_FORMAT="text")
    try:
        assert requests.get(f"{server.url}/healthz?probe=text", timeout=30).status_code == 200
    finally:
        log = server.stop()
    assert '"GET /healthz?probe=text HTTP/1.1" 200' in log
    assert not json_lines(log)


def test_bad_log_format_stops_gunicorn(tmp_path: Path) -> None:
    result = assert_start_refused("GAN_LOG_FORMAT must be one of json, text, got 'xml'",
                                  GAN_MODELS_DIR=str(write_repository(tmp_path / "models")),
                                  GAN_LOG_FORMAT="xml")
    assert result.returncode == 1

