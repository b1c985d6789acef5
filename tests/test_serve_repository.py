"""Model repository checks at start: missing, empty and corrupt repositories stop the service."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from tiny_models import (
    corrupt_onnx,
    corrupt_sha,
    edit_json,
    write_model,
    wrong_output_shape,
)

from serve.app import create_app
from serve.config import Settings, load_settings
from serve.registry import Registry
from serve.repository import RepositoryError, scan, validate_repository


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


@pytest.mark.parametrize(("corrupt", "fragment"), CORRUPTIONS)
def test_corrupt_version_stops_the_start(
    models_dir: Path, corrupt: Callable[[Path], None], fragment: str
) -> None:
    corrupt(models_dir / "tiny" / "2")
    with pytest.raises(RepositoryError) as master:
        validate_repository(models_dir)  # what gunicorn's master checks before forking
    with pytest.raises(RepositoryError) as worker:
        create_app({"GAN_MODELS_DIR": str(models_dir)})
    for error in (master, worker):
        assert fragment in str(error.value)
        assert str(models_dir / "tiny" / "2") in str(error.value)


@pytest.mark.parametrize(
    ("corrupt", "fragment"),
    [
        (wrong_output_shape, "model.onnx does not match model.json"),
        (corrupt_onnx, "onnxruntime cannot load model.onnx"),
    ],
)
def test_version_whose_session_disagrees_stops_the_worker(
    models_dir: Path, corrupt: Callable[[Path], None], fragment: str
) -> None:
    corrupt(models_dir / "tiny" / "2")
    validate_repository(models_dir)  # the files alone look right
    with pytest.raises(RepositoryError, match=fragment):
        create_app({"GAN_MODELS_DIR": str(models_dir)})


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


def test_lenient_registry_skips_bad_versions(models_dir: Path) -> None:
    corrupt_sha(models_dir / "tiny" / "2")
    registry = Registry(settings_for(models_dir), strict=False)
    assert {name: list(v) for name, v in registry.models.items()} == {"cond": [1], "tiny": [1]}


def test_lenient_registry_needs_one_good_version(tmp_path: Path) -> None:
    corrupt_sha(write_model(tmp_path, "tiny", 1))
    with pytest.raises(RepositoryError, match="sha256"):
        Registry(settings_for(tmp_path), strict=False)


def test_metadata_is_served_as_written(models_dir: Path) -> None:
    meta = json.loads((models_dir / "tiny" / "1" / "model.json").read_text())
    client = create_app({"GAN_MODELS_DIR": str(models_dir)}).test_client()
    assert client.get("/models/tiny").json["metadata"][0] == meta
