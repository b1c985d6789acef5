"""Hot reload: new versions are picked up between requests; bad ones are logged and skipped."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from helpers.tiny_models import corrupt_sha, write_model, wrong_output_shape

from serve.app import create_app
from serve.registry import Registry

INTERVAL = 5


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reloading_app(models_dir: Path, clock: Clock) -> Flask:
    """The app with a reload interval and a hand-moved clock."""
    app = create_app(
        {
            "GAN_MODELS_DIR": str(models_dir),
            "GAN_DEFAULT_MODEL": "tiny",
            "GAN_RELOAD_INTERVAL": str(INTERVAL),
        }
    )
    registry: Registry = app.extensions["gan"].registry
    registry.clock = clock
    registry.reload()  # start the interval on the test's clock
    return app


@pytest.fixture
def client(reloading_app: Flask) -> FlaskClient:
    return reloading_app.test_client()


def served_version(client: FlaskClient) -> str:
    response = client.post("/generate", json={"seed": 1})
    assert response.status_code == 200
    return response.headers["X-Model-Version"]


def versions(client: FlaskClient) -> list[int]:
    models = client.get("/models").json["models"]
    return next(m["versions"] for m in models if m["name"] == "tiny")


def test_new_version_is_served_after_the_interval(
    client: FlaskClient, models_dir: Path, clock: Clock
) -> None:
    assert served_version(client) == "2"
    write_model(models_dir, "tiny", 3, weight_seed=3)
    clock.now += INTERVAL - 1
    assert served_version(client) == "2"  # not rescanned yet
    clock.now += 1
    assert served_version(client) == "3"
    assert versions(client) == [1, 2, 3]


def test_new_model_is_served(client: FlaskClient, models_dir: Path, clock: Clock) -> None:
    write_model(models_dir, "fresh", 1)
    clock.now += INTERVAL
    response = client.post("/generate", json={"model": "fresh", "seed": 1})
    assert response.status_code == 200


@pytest.mark.parametrize("damage", [corrupt_sha, wrong_output_shape])
def test_bad_new_version_is_logged_and_the_old_one_kept(
    client: FlaskClient,
    models_dir: Path,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
    damage: Callable[[Path], None],
) -> None:
    staging = write_model(models_dir / ".staging", "tiny", 3)
    damage(staging)
    staging.rename(models_dir / "tiny" / "3")  # appears atomically, already bad
    clock.now += INTERVAL
    with caplog.at_level(logging.ERROR, logger="serve"):
        assert served_version(client) == "2"
    assert versions(client) == [1, 2]
    assert str(models_dir / "tiny" / "3") in caplog.text

    caplog.clear()
    clock.now += INTERVAL
    with caplog.at_level(logging.ERROR, logger="serve"):
        assert served_version(client) == "2"
    assert caplog.text == ""  # an unchanged bad version is not retried

    shutil.rmtree(models_dir / "tiny" / "3")
    write_model(models_dir, "tiny", 3, weight_seed=3)  # re-exported, good this time
    clock.now += INTERVAL
    assert served_version(client) == "3"


def test_removed_version_is_unloaded(client: FlaskClient, models_dir: Path, clock: Clock) -> None:
    shutil.rmtree(models_dir / "tiny" / "2")
    clock.now += INTERVAL
    assert served_version(client) == "1"
    response = client.post("/generate", json={"seed": 1, "version": 2})
    assert response.status_code == 404


def test_missing_repository_keeps_the_loaded_models(
    client: FlaskClient, models_dir: Path, clock: Clock, tmp_path: Path
) -> None:
    models_dir.rename(tmp_path / "elsewhere")
    clock.now += INTERVAL
    assert served_version(client) == "2"


def test_interval_zero_never_rescans(models_dir: Path, clock: Clock) -> None:
    app = create_app(
        {"GAN_MODELS_DIR": str(models_dir), "GAN_DEFAULT_MODEL": "tiny", "GAN_RELOAD_INTERVAL": "0"}
    )
    app.extensions["gan"].registry.clock = clock
    client = app.test_client()
    write_model(models_dir, "tiny", 3)
    clock.now += 10**6
    assert served_version(client) == "2"
