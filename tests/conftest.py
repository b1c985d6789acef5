"""Fixtures: an app and a client on a tiny model repository, and real gunicorn servers.

The helpers they use (and the tests import) live in tests/helpers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from helpers.server import Server, start_gunicorn
from helpers.tiny_models import write_repository

from serve.app import create_app


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
