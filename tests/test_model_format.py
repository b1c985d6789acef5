"""The model format has one owner, serve.repository: export, sample and evaluate use its rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.tiny_models import corrupt_sha, write_model
from helpers.training import tiny_config

import train.export
from serve.repository import (
    ModelError,
    next_version,
    read_spec,
    resolve_version_dir,
    sha256_of,
    tensor_entries,
)
from train.errors import TrainError
from train.evaluate import from_onnx
from train.export import export
from train.loop import fit
from train.sample import resolve_model_dir

ODD_VERSIONS = ("007", "²", "01")  # digits, but no version: leading zeros, not ASCII


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-step training run to export."""
    return fit(tiny_config(tmp_path_factory.mktemp("run"), arch="mlp", steps=2), progress=False)


def odd_dirs(model_dir: Path) -> None:
    """Directories whose names pass ``str.isdigit`` but are not versions."""
    for entry in ODD_VERSIONS:
        (model_dir / entry).mkdir(parents=True)


@pytest.mark.parametrize("name", ["tiny\n", "Tiny", "-tiny", "ti ny"])
def test_export_refuses_a_name_the_service_refuses(name: str, tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="must match"):
        export(tmp_path / "no-run", tmp_path / "models", name)
    assert not (tmp_path / "models").exists()


def test_odd_digit_directories_are_not_versions(tmp_path: Path) -> None:
    model_dir = tmp_path / "tiny"
    odd_dirs(model_dir)
    assert next_version(model_dir) == 1
    with pytest.raises(ModelError, match="no exported model"):
        resolve_version_dir(model_dir)
    with pytest.raises(TrainError, match="no exported model"):
        resolve_model_dir(model_dir)
    write_model(tmp_path, "tiny", 3)
    assert next_version(model_dir) == 4
    assert resolve_model_dir(model_dir) == model_dir / "3"


def test_sample_refuses_a_version_directory_with_leading_zeros(tmp_path: Path) -> None:
    version_dir = write_model(tmp_path, "tiny", 7)
    odd = version_dir.rename(tmp_path / "tiny" / "007")
    with pytest.raises(TrainError, match="not a version directory"):
        resolve_model_dir(odd)


def test_export_numbers_past_odd_directories_without_a_traceback(run: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    odd_dirs(models / "m")
    assert export(run, models, "m") == models / "m" / "1"
    assert export(run, models, "m") == models / "m" / "2"


def test_export_checks_its_staging_directory_with_the_service_reader(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = train.export.model_metadata

    def wrong_version(name: str, version: int, *args: object, **kwargs: object) -> dict:
        return real(name, version + 1, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train.export, "model_metadata", wrong_version)
    with pytest.raises(TrainError, match="service would refuse.*version must be 1"):
        export(run, tmp_path, "m")
    assert list((tmp_path / "m").iterdir()) == []  # nothing published, no staging left


def test_exported_metadata_has_the_format_tensor_entries(run: Path, tmp_path: Path) -> None:
    target = export(run, tmp_path, "m")
    meta = json.loads((target / "model.json").read_text())
    spec = read_spec(target, "m", 1)
    inputs, output = tensor_entries(spec.latent_size, spec.conditional, spec.image_shape)
    assert meta["inputs"] == inputs
    assert {k: meta["output"][k] for k in output} == output
    assert meta["onnx"]["sha256"] == sha256_of(target / "model.onnx")


def test_evaluate_refuses_a_wrong_sha256_with_the_service_message(run: Path, tmp_path: Path) -> None:
    version_dir = export(run, tmp_path, "m")
    assert from_onnx(tmp_path / "m").latent_size > 0  # the probe: a good export loads
    corrupt_sha(version_dir)
    with pytest.raises(ModelError) as service:
        read_spec(version_dir, "m", 1)
    with pytest.raises(TrainError) as evaluate:
        from_onnx(tmp_path / "m")
    assert str(evaluate.value) == str(service.value)
    assert "sha256 of model.onnx is" in str(evaluate.value)


def test_sha256_of_hashes_in_chunks(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "blob"
    data = bytes(range(256)) * 9000  # more than one chunk
    path.write_bytes(data)
    assert sha256_of(path) == hashlib.sha256(data).hexdigest()
