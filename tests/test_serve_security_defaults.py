"""Protections that are on without any setting: size, sample and time limits, and no debug mode
(Flask's, or the Werkzeug debugger under ``flask run``) however the environment asks for it."""

from __future__ import annotations

import json
import runpy
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from helpers.server import ROOT, START_TIMEOUT, Server, assert_start_refused, free_port, gunicorn_env
from helpers.tiny_models import write_repository

from serve.app import create_app
from serve.config import ConfigError, load_settings

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("defaults") / "models")


@pytest.fixture(scope="module")
def server(repo: Path, gunicorn: Callable[..., Server]) -> Server:
    """Nothing but the repository and one worker: every limit at its default."""
    return gunicorn(GAN_MODELS_DIR=str(repo), GAN_WORKERS="1")


def test_limits_have_defaults() -> None:
    settings = load_settings({})
    assert settings.max_body_bytes == MIB
    assert settings.max_samples == 64
    assert settings.client_timeout == 10  # seconds to send a whole request (and to read one)
    assert settings.timeout == 30  # seconds a worker may spend on one request
    assert (settings.api_tokens, settings.rate_limit) == ((), None)  # opt-in, documented
    config = runpy.run_path(str(ROOT / "serve" / "gunicorn.conf.py"))
    assert (config["timeout"], config["worker_class"]) == (30, "serve.worker.EventWorker")
    assert config["preload_app"] is False


def test_body_over_the_default_limit_is_a_413(server: Server) -> None:
    body = b'{"seeds": [' + b"1, " * (MIB // 3) + b"1]}"
    assert len(body) > MIB
    response = requests.post(f"{server.url}/generate", data=body, timeout=30,
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"


def test_more_samples_than_the_default_limit_is_a_422(server: Server) -> None:
    response = requests.get(f"{server.url}/generate?model=tiny&seed=0&n=65", timeout=30)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "too_many_samples"
    assert requests.get(f"{server.url}/generate?model=tiny&seed=0&n=64", timeout=30).ok


def test_a_request_that_never_ends_gets_a_408_by_default(server: Server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the headers never end
        answer = b""
        while chunk := sock.recv(65536):  # the worker closes the connection after its answer
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_no_debugger_route(server: Server) -> None:
    response = requests.get(f"{server.url}/console", timeout=30)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_flask_debug_is_refused(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("1", "true", "yes"):
        monkeypatch.setenv("FLASK_DEBUG", value)
        with pytest.raises(ConfigError, match="FLASK_DEBUG"):
            create_app({"GAN_MODELS_DIR": str(repo)})
    monkeypatch.setenv("FLASK_DEBUG", "0")
    assert create_app({"GAN_MODELS_DIR": str(repo), "GAN_RELOAD_INTERVAL": "0"}).debug is False
    monkeypatch.delenv("FLASK_DEBUG")
    assert_start_refused("the service never runs in debug mode", GAN_MODELS_DIR=str(repo), FLASK_DEBUG="1")


@pytest.mark.parametrize("options", [["--debug", "run"], ["run", "--debugger"]])
def test_flask_run_refuses_the_debugger(repo: Path, options: list[str]) -> None:
    # Were the debugger accepted, the server would run until the timeout: the test fails.
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "serve.app:create_app()", *options,
         "--port", str(free_port())],
        cwd=ROOT, env=gunicorn_env(GAN_MODELS_DIR=str(repo)), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=START_TIMEOUT,
    )
    assert result.returncode != 0
    assert "Werkzeug debugger, which runs code sent to it" in result.stderr
