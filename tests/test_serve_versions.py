"""The version policy: which versions each worker loads, the on-demand LRU cache, and reloads."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from helpers.openapi import assert_matches_openapi, assert_matches_schema
from helpers.tiny_models import CLASSES, corrupt_onnx, write_model, wrong_output_shape

from serve import registry as registry_module
from serve.app import create_app
from serve.config import ConfigError, VersionPolicy, load_settings, parse_version_policy
from serve.openapi import ERROR_SCHEMA
from serve.registry import Registry
from serve.repository import RepositoryError


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """``tiny`` versions 1 to 3 (different weights) and the conditional ``cond`` version 1."""
    models = tmp_path / "models"
    for version in (1, 2, 3):
        write_model(models, "tiny", version, weight_seed=version)
    write_model(models, "cond", 1, classes=CLASSES, weight_seed=9)
    return models


def make_app(models_dir: Path, **settings: str) -> Flask:
    config = {"GAN_MODELS_DIR": str(models_dir), "GAN_DEFAULT_MODEL": "tiny",
              "GAN_RELOAD_INTERVAL": "0"}
    return create_app(config | {f"GAN_{k.upper()}": v for k, v in settings.items()})


def registry_of(app: Flask) -> Registry:
    return app.extensions["gan"].registry


def model(client: FlaskClient, name: str = "tiny") -> dict[str, Any]:
    """/models/<name>, checked against its documented schema."""
    response = client.get(f"/models/{name}")
    assert response.status_code == 200
    assert_matches_openapi(client, response, "/models/{name}")
    return response.json


def generate(client: FlaskClient, **body: Any) -> Any:
    return client.post("/generate", json={"seeds": [0, 1, 2]} | body)


def assert_error(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.data
    assert_matches_schema(response.json, ERROR_SCHEMA)
    assert response.json["error"]["code"] == code
    return response.json["error"]["message"]


class LoadCounter:
    """Wraps the registry's load_onnx_generator: counts the loads of each (name, version)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay: float = 0.0) -> None:
        self.loads: list[tuple[str, int]] = []
        self.delay = delay
        self._load = registry_module.load_onnx_generator
        monkeypatch.setattr(registry_module, "load_onnx_generator", self)

    def __call__(self, spec: Any, *settings: Any) -> Any:
        self.loads.append((spec.name, spec.version))
        time.sleep(self.delay)  # widens the window in which a second load would start
        return self._load(spec, *settings)


# --- GAN_VERSION_POLICY and GAN_VERSION_CACHE --------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("latest:1", "latest:1"),
        ("latest:3", "latest:3"),
        ("latest", "latest:1"),
        (" Latest:2 ", "latest:2"),
        ("all", "all"),
        ("specific:3,1", "specific:1,3"),
        ("specific: 2 , 5", "specific:2,5"),
    ],
)
def test_policy_syntax(raw: str, text: str) -> None:
    assert str(parse_version_policy(raw)) == text
    assert str(load_settings({"GAN_VERSION_POLICY": raw}).version_policy) == text


@pytest.mark.parametrize(
    "raw",
    ["", "newest", "latest:0", "latest:", "latest:-1", "latest:1.5", "latest:01", "latest:1:2",
     "all:2", "specific", "specific:", "specific:0", "specific:1,,2", "specific:1,x",
     "specific:1,1", "specific:01"],
)
def test_malformed_policy_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="GAN_VERSION_POLICY"):
        load_settings({"GAN_VERSION_POLICY": raw})


def test_policy_and_cache_defaults() -> None:
    settings = load_settings({})
    assert settings.version_policy == VersionPolicy("latest", count=1)
    assert settings.version_cache == 2
    assert load_settings({"GAN_VERSION_CACHE": "0"}).version_cache == 0


@pytest.mark.parametrize("raw", ["-1", "x", "1.5", ""])
def test_malformed_cache_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="GAN_VERSION_CACHE"):
        load_settings({"GAN_VERSION_CACHE": raw})


# --- What each policy loads ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "tiny", "cond"),
    [
        ("latest:1", [3], [1]),
        ("latest:2", [2, 3], [1]),
        ("latest:5", [1, 2, 3], [1]),
        ("all", [1, 2, 3], [1]),
        ("specific:1,3", [1, 3], [1]),
    ],
)
def test_policy_decides_what_is_loaded(
    repo: Path, monkeypatch: pytest.MonkeyPatch, policy: str, tiny: list[int], cond: list[int]
) -> None:
    counter = LoadCounter(monkeypatch)
    client = make_app(repo, version_policy=policy).test_client()
    assert sorted(counter.loads) == sorted([("cond", v) for v in cond] + [("tiny", v) for v in tiny])
    body = model(client)
    assert body["versions"] == [1, 2, 3]  # every version on disk stays servable
    assert body["policy_versions"] == body["loaded_versions"] == tiny
    assert body["default_version"] == 3
    assert body["version_policy"] == str(parse_version_policy(policy))
    assert model(client, "cond")["loaded_versions"] == cond
    assert generate(client).headers["X-Model-Version"] == "3"


def test_default_version_is_the_highest_the_policy_loads(repo: Path) -> None:
    client = make_app(repo, version_policy="specific:1,2").test_client()
    assert model(client)["default_version"] == 2
    assert generate(client).headers["X-Model-Version"] == "2"
    assert generate(client, version=3).headers["X-Model-Version"] == "3"  # on demand


def test_model_without_a_policy_version_is_served_on_demand(repo: Path) -> None:
    # specific:2 selects no version of cond: its default is its highest, loaded when asked.
    client = make_app(repo, version_policy="specific:2").test_client()
    cond = model(client, "cond")
    assert (cond["policy_versions"], cond["loaded_versions"], cond["default_version"]) == ([], [], 1)
    assert generate(client, model="cond").headers["X-Model-Version"] == "1"
    assert model(client, "cond")["loaded_versions"] == [1]

    off = make_app(repo, version_policy="specific:2", version_cache="0").test_client()
    assert_error(generate(off, model="cond"), 404, "version_not_loaded")
    assert off.get("/readyz").status_code == 200  # tiny 2 is loaded


def test_policy_that_selects_nothing_stops_the_start(repo: Path) -> None:
    with pytest.raises(RepositoryError, match="GAN_VERSION_POLICY=specific:7 selects none"):
        make_app(repo, version_policy="specific:7")


def test_start_checks_every_version_on_disk(repo: Path) -> None:
    (repo / "tiny" / "1" / "model.onnx").write_bytes(b"changed")  # sha256 no longer matches
    client = make_app(repo).test_client()  # outside the policy, yet checked: reported
    rejected = client.get("/readyz").json["rejected"]
    assert [(r["model"], r["version"]) for r in rejected] == [("tiny", 1)]
    assert "sha256 of model.onnx" in rejected[0]["reason"]
    assert model(client)["versions"] == [2, 3]
    assert_error(generate(client, version=1), 503, "version_unavailable")


# --- Pinned versions outside the policy: the on-demand cache --------------------------------


def test_pinned_old_version_is_loaded_on_demand_with_the_same_bytes(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eager = make_app(repo, version_policy="all").test_client()
    counter = LoadCounter(monkeypatch)
    client = make_app(repo).test_client()
    assert model(client)["loaded_versions"] == [3]
    counter.loads.clear()
    for body in ({"version": 1, "seeds": [0, 7, 2]},
                 {"version": 1, "seed": 5, "n": 4, "format": "png"},
                 {"version": 1, "seeds": [3], "format": "npy"}):
        response = client.post("/generate", json=body)
        assert response.status_code == 200
        assert response.headers["X-Model-Version"] == "1"
        assert response.data == eager.post("/generate", json=body).data
    assert counter.loads == [("tiny", 1)]  # loaded once, then served from the cache
    body = model(client)
    assert (body["policy_versions"], body["loaded_versions"]) == ([3], [1, 3])
    assert generate(client).headers["X-Model-Version"] == "3"  # the default is unchanged
    get = client.get("/generate?seed=3&n=2&version=1")
    assert get.status_code == 200 and get.headers["X-Model-Version"] == "1"


def test_cache_evicts_the_least_recently_used(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    for version in (1, 2, 3, 4):
        write_model(repo, "tiny", version, weight_seed=version)
    write_model(repo, "other", 1)
    write_model(repo, "other", 2)
    client = make_app(repo, version_cache="2").test_client()

    def loaded() -> dict[str, list[int]]:
        response = client.get("/models")
        assert_matches_openapi(client, response, "/models")
        listing = response.json
        assert listing["version_cache"] == 2
        return {m["name"]: m["loaded_versions"] for m in listing["models"]}

    for version in (1, 2, 3):
        assert generate(client, version=version).status_code == 200
    assert loaded() == {"other": [2], "tiny": [2, 3, 4]}  # 1 was the least recently used
    assert generate(client, version=2).status_code == 200  # 2 is now more recent than 3
    assert generate(client, version=1).status_code == 200
    assert loaded() == {"other": [2], "tiny": [1, 2, 4]}
    # The cache holds versions of every model together.
    assert generate(client, model="other", version=1).status_code == 200
    assert loaded() == {"other": [1, 2], "tiny": [1, 4]}
    # Resident versions never count against the cache, nor are they evicted.
    assert generate(client, version=4).status_code == 200
    assert loaded() == {"other": [1, 2], "tiny": [1, 4]}


def test_cache_zero_refuses_versions_outside_the_policy(repo: Path) -> None:
    client = make_app(repo, version_cache="0").test_client()
    message = assert_error(generate(client, version=1), 404, "version_not_loaded")
    assert "exists on disk but is not loaded by the version policy latest:1" in message
    assert_error(client.get("/generate?seed=1&version=2"), 404, "version_not_loaded")
    assert_error(generate(client, version=9), 404, "unknown_version")
    assert generate(client, version=3).status_code == 200
    assert model(client)["loaded_versions"] == [3]
    assert client.get("/models").json["version_cache"] == 0


@pytest.mark.parametrize("damage", [wrong_output_shape, corrupt_onnx])
def test_broken_version_loaded_on_demand_is_a_503(
    repo: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, damage: Any
) -> None:
    damage(repo / "tiny" / "1")  # passes the master's checks (sha256 matches), fails to load
    app = make_app(repo)  # latest:1 never loads version 1 at start
    client = app.test_client()
    with caplog.at_level(logging.ERROR, logger="serve"):
        message = assert_error(generate(client, version=1), 503, "version_unavailable")
    assert "exists on disk but fails the service's checks" in message
    assert str(repo / "tiny" / "1") in caplog.text  # the reason is logged, not sent
    assert str(repo) not in message

    counter = LoadCounter(monkeypatch)
    assert_error(generate(client, version=1), 503, "version_unavailable")
    assert counter.loads == []  # remembered: not retried while its files are unchanged
    assert model(client)["versions"] == [2, 3]
    assert generate(client, version=2).status_code == 200  # the others keep serving

    shutil.rmtree(repo / "tiny" / "1")
    write_model(repo, "tiny", 1, weight_seed=1)  # replaced by a good one: retried
    registry_of(app).reload()
    assert generate(client, version=1).status_code == 200
    assert model(client)["versions"] == [1, 2, 3]


def test_concurrent_requests_load_a_version_once(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = registry_of(make_app(repo))
    counter = LoadCounter(monkeypatch, delay=0.2)
    barrier = threading.Barrier(6)
    results: list[Any] = []

    def worker() -> None:
        barrier.wait()
        results.append(registry.resolve("tiny", 1))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.loads == [("tiny", 1)]
    assert len(results) == 6 and all(r is results[0] for r in results)


def test_loaded_versions_resolve_without_the_file_system(
    repo: Path, tmp_path: Path
) -> None:
    registry = registry_of(make_app(repo))
    registry.resolve("tiny", 1)  # into the cache
    repo.rename(tmp_path / "elsewhere")
    assert registry.resolve(None, None).spec.version == 3
    assert registry.resolve("tiny", 1).spec.version == 1
    assert registry.resolve("cond", None).spec.name == "cond"


# --- Reloads recompute the policy's set -----------------------------------------------------


@pytest.mark.parametrize("cache", ["0", "2"])
def test_new_highest_version_replaces_the_old_one(
    repo: Path, caplog: pytest.LogCaptureFixture, cache: str
) -> None:
    app = make_app(repo, version_cache=cache)
    registry = registry_of(app)
    client = app.test_client()
    old = registry.resolve("tiny", 3)
    write_model(repo, "tiny", 4, weight_seed=4)
    with caplog.at_level(logging.INFO, logger="serve"):
        registry.reload()
    assert generate(client).headers["X-Model-Version"] == "4"
    body = model(client)
    assert (body["default_version"], body["policy_versions"], body["versions"]) == (4, [4], [1, 2, 3, 4])
    assert [m["version"] for m in body["metadata"]] == [1, 2, 3, 4]
    if cache == "0":
        assert body["loaded_versions"] == [4]  # version 3's session is gone
        assert "not in the version policy" in caplog.text
        assert_error(generate(client, version=3), 404, "version_not_loaded")
    else:
        assert body["loaded_versions"] == [3, 4]  # kept in the cache, not reloaded
        assert registry.resolve("tiny", 3) is old


def test_reload_with_latest_two_keeps_the_two_highest(repo: Path) -> None:
    app = make_app(repo, version_policy="latest:2", version_cache="0")
    write_model(repo, "tiny", 4, weight_seed=4)
    registry_of(app).reload()
    assert model(app.test_client())["loaded_versions"] == [3, 4]


def test_removed_versions_leave_the_policy_and_the_cache(repo: Path) -> None:
    app = make_app(repo)
    registry = registry_of(app)
    client = app.test_client()
    cached = registry.resolve("tiny", 2)
    assert model(client)["loaded_versions"] == [2, 3]
    shutil.rmtree(repo / "tiny" / "3")
    registry.reload()
    # 2 is the highest now: it moves from the cache into the policy's set, same session.
    body = model(client)
    assert (body["versions"], body["policy_versions"], body["loaded_versions"]) == ([1, 2], [2], [2])
    assert registry.resolve(None, None) is cached
    assert_error(generate(client, version=3), 404, "unknown_version")

    registry.resolve("tiny", 1)
    shutil.rmtree(repo / "tiny" / "1")
    registry.reload()
    assert model(client)["loaded_versions"] == [2]
    assert_error(generate(client, version=1), 404, "unknown_version")


def test_broken_new_highest_version_keeps_the_old_one_loaded(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(repo, version_policy="latest:2")
    staging = write_model(repo / ".staging", "tiny", 4)
    wrong_output_shape(staging)
    staging.rename(repo / "tiny" / "4")
    with caplog.at_level(logging.ERROR, logger="serve"):
        registry_of(app).reload()
    assert str(repo / "tiny" / "4") in caplog.text
    client = app.test_client()
    body = model(client)
    assert (body["versions"], body["policy_versions"]) == ([1, 2, 3], [2, 3])
    assert_error(generate(client, version=4), 503, "version_unavailable")


def test_models_listing_fields(repo: Path) -> None:
    client = make_app(repo, version_policy="latest:2", version_cache="3").test_client()
    response = client.get("/models")
    assert_matches_openapi(client, response, "/models")
    listing = response.json
    assert listing["default"] == "tiny"
    assert listing["version_cache"] == 3
    tiny = next(m for m in listing["models"] if m["name"] == "tiny")
    assert tiny | {"classes": None} == {
        "name": "tiny",
        "default_version": 3,
        "versions": [1, 2, 3],
        "policy_versions": [2, 3],
        "loaded_versions": [2, 3],
        "version_policy": "latest:2",
        "latent_size": 8,
        "conditional": False,
        "classes": None,
        "image_shape": [1, 6, 5],
    }
    assert client.get("/readyz").json == {
        "status": "ready", "models": ["cond", "tiny"], "repository": "ok", "rejected": []
    }
