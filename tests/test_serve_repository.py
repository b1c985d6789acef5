"""Model repository checks at start: missing, empty and corrupt repositories stop the service."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.tiny_models import (
    corrupt_onnx,
    corrupt_sha,
    edit_json,
    write_model,
    wrong_output_shape,
)

from serve.app import create_app
from serve.config import Settings, load_settings
from serve.registry import Registry
from serve.repository import RepositoryError, check_repository, scan, validate_repository


def settings_for(models_dir: Path, **env: str) -> Settings:
    return load_settings({"GAN_MODELS_DIR": str(models_dir), **env})


def test_valid_repository(models_dir: Path) -> None:
    specs = validate_repository(models_dir)
    assert sorted((s.name, s.version) for s in specs) == [("cond", 1), ("tiny", 1), ("tiny", 2)]
    cond = next(s for s in specs if s.name == "cond")
    assert cond.conditional and cond.classes == ("zero", "one", "two")


def test_scan_skips_what_is_not_a_version(models_dir: Path) -> None:
    (models_dir / "tiny" / ".3.tmp").mkdir()  # an export in progress
    (models_dir / "tiny" / "03").mkdir()  # leading zero: not a version name
    (models_dir / "tiny" / "latest").mkdir()
    (models_dir / "tiny" / "4").write_text("a file, not a directory")
    (models_dir / "README.md").write_text("notes")
    (models_dir / ".git").mkdir()
    (models_dir / "Bad Name" / "1").mkdir(parents=True)
    (models_dir / "no-versions").mkdir()
    assert {name: list(v) for name, v in scan(models_dir).items()} == {
        "cond": [1],
        "tiny": [1, 2],
    }


def test_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="does not exist"):
        create_app({"GAN_MODELS_DIR": str(tmp_path / "nowhere")})


def test_empty_repository(tmp_path: Path) -> None:
    (tmp_path / ".gitkeep").write_text("")
    with pytest.raises(RepositoryError, match="holds no models"):
        create_app({"GAN_MODELS_DIR": str(tmp_path)})


def _remove_json(path: Path) -> None:
    (path / "model.json").unlink()


def _garble_json(path: Path) -> None:
    (path / "model.json").write_text("{not json")


def _set(dotted: str, value: object) -> Callable[[Path], None]:
    def change(meta: dict) -> None:
        *parents, last = dotted.split(".")
        node = meta
        for key in parents:
            node = node[key]
        node[last] = value

    return lambda path: edit_json(path, change)


CORRUPTIONS = [
    (corrupt_sha, "sha256 of model.onnx is"),
    (_remove_json, "missing model.json"),
    (_garble_json, "not valid JSON"),
    (_set("name", "other"), "name must be 'tiny'"),
    (_set("version", 3), "version must be 2"),
    (_set("format", 2), "format must be 1"),
    (_set("latent.size", 9), "inputs must be"),
    (_set("latent.distribution", "uniform"), "latent.distribution"),
    (_set("inputs", [{"name": "noise", "dtype": "float32", "shape": ["n", 8]}]), "inputs must be"),
    (_set("output.shape", ["n", 1, 6]), "output must be"),
    (_set("output.shape", ["n", 2, 6, 5]), "channels must be 1 or 3"),
    (_set("conditional", True), "classes must be a list, got null"),
    (_set("conditional", "yes"), "conditional must be true or false"),
    (_set("onnx", {}), "lacks onnx.sha256"),
]


def assert_rejected_and_others_served(models_dir: Path, fragment: str) -> None:
    """The service starts without tiny/2, serves tiny/1 in its place, and says why."""
    client = create_app({"GAN_MODELS_DIR": str(models_dir)}).test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json["models"] == ["cond", "tiny"]
    [rejected] = ready.json["rejected"]
    assert (rejected["model"], rejected["version"]) == ("tiny", 2)
    assert fragment in rejected["reason"]
    assert str(models_dir) not in rejected["reason"]  # no local paths to clients
    response = client.post("/generate", json={"model": "tiny", "seed": 1})
    assert response.status_code == 200
    assert response.headers["X-Model-Version"] == "1"
    assert client.post("/generate", json={"model": "tiny", "version": 2, "seed": 1}).status_code == 503


@pytest.mark.parametrize(("corrupt", "fragment"), CORRUPTIONS)
def test_corrupt_version_is_reported_and_the_others_served(
    models_dir: Path, corrupt: Callable[[Path], None], fragment: str
) -> None:
    corrupt(models_dir / "tiny" / "2")
    with pytest.raises(RepositoryError) as strict:
        validate_repository(models_dir)  # the strict check, for tools that publish versions
    assert fragment in str(strict.value)
    specs, problems = check_repository(models_dir)  # what gunicorn's master checks first
    assert sorted((s.name, s.version) for s in specs) == [("cond", 1), ("tiny", 1)]
    assert len(problems) == 1 and fragment in problems[0]
    assert_rejected_and_others_served(models_dir, fragment)


@pytest.mark.parametrize(("corrupt", "fragment"), CORRUPTIONS[:3])
def test_nothing_servable_stops_the_start(
    tmp_path: Path, corrupt: Callable[[Path], None], fragment: str
) -> None:
    corrupt(write_model(tmp_path, "tiny", 2))
    for start in (lambda: check_repository(tmp_path), lambda: create_app({"GAN_MODELS_DIR": str(tmp_path)})):
        with pytest.raises(RepositoryError, match="has no servable version") as error:
            start()
        assert fragment in str(error.value)
        assert str(tmp_path / "tiny" / "2") in str(error.value)  # the operator's log says where


@pytest.mark.parametrize(
    ("corrupt", "fragment"),
    [
        (wrong_output_shape, "model.onnx does not match model.json"),
        (corrupt_onnx, "onnxruntime cannot load model.onnx"),
    ],
)
def test_version_whose_session_disagrees_is_reported_and_the_others_served(
    models_dir: Path, corrupt: Callable[[Path], None], fragment: str
) -> None:
    corrupt(models_dir / "tiny" / "2")
    validate_repository(models_dir)  # the files alone look right
    assert_rejected_and_others_served(models_dir, fragment)


def test_symbolic_output_dims_are_checked_by_a_probe_run(tmp_path: Path) -> None:
    write_model(tmp_path, "loose", 1, symbolic_output=True)
    assert create_app({"GAN_MODELS_DIR": str(tmp_path)}).test_client().get("/readyz").status_code == 200
    wrong_output_shape(tmp_path / "loose" / "1")
    with pytest.raises(RepositoryError, match=r"returns float32 images of shape \[1, 1, 6, 5\]"):
        create_app({"GAN_MODELS_DIR": str(tmp_path)})


def test_conditional_input_must_match(tmp_path: Path) -> None:
    path = write_model(tmp_path, "cond", 1, classes=["a", "b"])
    edit_json(path, lambda m: m["inputs"][1].update(dtype="int32"))
    with pytest.raises(RepositoryError, match="inputs must be"):
        validate_repository(tmp_path)


def test_unknown_default_model_stops_the_start(models_dir: Path) -> None:
    with pytest.raises(RepositoryError, match="GAN_DEFAULT_MODEL=mnist"):
        create_app({"GAN_MODELS_DIR": str(models_dir), "GAN_DEFAULT_MODEL": "mnist"})


def test_replacement_registry_starts_empty_and_loads_once_the_repository_is_back(
    models_dir: Path, tmp_path: Path
) -> None:
    away = tmp_path / "away"
    models_dir.rename(away)  # a volume being remounted
    now = [0.0]
    registry = Registry(settings_for(models_dir), clock=lambda: now[0], must_load=False)
    assert not registry.ready and "does not exist" in (registry.repository_error or "")
    now[0] += 1.0
    assert registry.tick() is False  # retried every second, still away
    away.rename(models_dir)
    assert registry.tick() is False  # not a second since the last try
    now[0] += 1.0
    assert registry.tick() is True
    assert registry.repository_error is None
    assert {name: list(v) for name, v in registry.models.items()} == {"cond": [1], "tiny": [2]}


def test_unreadable_repository_keeps_the_loaded_models(models_dir: Path, tmp_path: Path) -> None:
    now = [0.0]
    registry = Registry(settings_for(models_dir, GAN_RELOAD_INTERVAL="1"), clock=lambda: now[0])
    for gone in (lambda: models_dir.rename(tmp_path / "away"), lambda: None):
        gone()
        now[0] += 1.0
        assert registry.tick() is True
        assert registry.repository_error is not None
        assert registry.resolve("tiny", None).spec.version == 2
        if not models_dir.exists():
            models_dir.mkdir()  # back, but empty: taken for a repository not there yet
    for entry in (tmp_path / "away").iterdir():
        entry.rename(models_dir / entry.name)
    now[0] += 1.0
    assert registry.tick() is True and registry.repository_error is None


def test_metadata_is_served_as_written(models_dir: Path) -> None:
    meta = json.loads((models_dir / "tiny" / "1" / "model.json").read_text())
    client = create_app({"GAN_MODELS_DIR": str(models_dir)}).test_client()
    assert client.get("/models/tiny").json["metadata"][0] == meta
