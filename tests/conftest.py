"""Fixtures: an app and a client on a tiny model repository, and a real gunicorn server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from helpers.tiny_models import write_repository

from serve.app import create_app

ROOT = Path(__file__).resolve().parent.parent

START_TIMEOUT = 60.0  # seconds for gunicorn to become ready: a bound, not an expectation


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's GAN_ variables out of the tests."""
    for name in list(os.environ):
        if name.startswith("GAN_"):
            monkeypatch.delenv(name)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """A repository with ``tiny`` versions 1 and 2 and the conditional ``cond``."""
    return write_repository(tmp_path / "models")


@pytest.fixture
def app(models_dir: Path) -> Flask:
    """The app on the tiny repository, ``tiny`` as the default model, reload off."""
    return create_app(
        {
            "GAN_MODELS_DIR": str(models_dir),
            "GAN_DEFAULT_MODEL": "tiny",
            "GAN_RELOAD_INTERVAL": "0",
            "GAN_MAX_SAMPLES": "16",
            "GAN_MAX_BODY_BYTES": "65536",
        }
    )


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of ``app``."""
    return app.test_client()


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gunicorn_command(port: int) -> list[str]:
    """The documented start command, bound to a loopback port."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "serve/gunicorn.conf.py",
        "--bind",
        f"127.0.0.1:{port}",
    ]


def gunicorn_env(**settings: str) -> dict[str, str]:
    """The test process's environment without GAN_ variables, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAN_")}
    return env | settings


@dataclass
class Server:
    """A running gunicorn, its base URL and the file its output goes to."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def stop(self) -> str:
        """Stop gracefully (if still running) and return everything it logged."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.log_path.read_text(errors="replace")


def start_gunicorn(log_dir: Path, **settings: str) -> Server:
    """Start gunicorn with GAN_ ``settings`` and wait until /readyz answers 200."""
    port = free_port()
    log_path = log_dir / f"gunicorn-{port}.log"
    # A file, not a pipe: access logs would fill a pipe nobody reads and block the server.
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            gunicorn_command(port), cwd=ROOT, env=gunicorn_env(**settings), stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}:\n{server.stop()}")
        try:
            if requests.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.1)  # polling interval, not an assertion
    log_text = server.stop()
    raise RuntimeError(f"gunicorn not ready after {START_TIMEOUT} s:\n{log_text}")


@pytest.fixture(scope="module")
def gunicorn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """Start gunicorn servers (GAN_ settings as keywords); all are stopped after the module."""
    servers: list[Server] = []
    log_dir = tmp_path_factory.mktemp("gunicorn-logs")

    def start(**settings: str) -> Server:
        server = start_gunicorn(log_dir, **settings)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def gunicorn_failed_start() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run gunicorn with GAN_ settings expecting it to stop by itself; return its result."""

    def run(**settings: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            gunicorn_command(free_port()),
            cwd=ROOT,
            env=gunicorn_env(**settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=START_TIMEOUT,
        )

    return run
