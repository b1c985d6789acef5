"""Export: ONNX parity with torch, model.json contents, atomicity and refusals."""

import hashlib
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers.training import tiny_config

from serve.latent import noise_for_seeds
from train.errors import TrainError
from train.export import export, load_trained_generator
from train.loop import fit


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return {
        "dcgan": fit(tiny_config(base / "d", steps=2, ema=0.9), progress=False),
        "mlp": fit(tiny_config(base / "m", arch="mlp", steps=2), progress=False),
        "cond": fit(tiny_config(base / "c", conditional=True, steps=2), progress=False),
    }


def test_export_writes_valid_model_and_metadata(runs, tmp_path):
    target = export(runs["dcgan"], tmp_path, "tiny")
    assert target == tmp_path / "tiny" / "1"
    meta = json.loads((target / "model.json").read_text())
    onnx_bytes = (target / "model.onnx").read_bytes()
    assert meta["onnx"]["sha256"] == hashlib.sha256(onnx_bytes).hexdigest()
    assert meta["name"] == "tiny" and meta["version"] == 1 and meta["created"].endswith("Z")
    assert meta["latent"]["size"] == 100 and meta["latent"]["distribution"] == "standard_normal"
    assert meta["output"] == {"name": "images", "dtype": "float32", "shape": ["n", 1, 28, 28],
                              "range": [0.0, 1.0]}
    assert meta["dataset"] == {"name": "arrays", "size": 32}
    assert meta["training"]["config"]["ema"] == 0.9 and meta["training"]["steps"] == 2
    assert 0 <= meta["onnx"]["max_abs_diff"] <= 1e-4
    assert meta["conditional"] is False and meta["classes"] is None

    session = ort.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("z", ["n", 100])]
    z = noise_for_seeds(range(5), 100)
    got = session.run(["images"], {"z": z})[0]
    G, _ = load_trained_generator(runs["dcgan"])
    with torch.no_grad():
        expected = G(torch.from_numpy(z)).numpy()
    assert got.shape == (5, 1, 28, 28)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_export_conditional_lists_classes_and_takes_labels(runs, tmp_path):
    target = export(runs["cond"], tmp_path, "cond")
    meta = json.loads((target / "model.json").read_text())
    assert meta["conditional"] is True and meta["classes"] == ["0", "1", "2"]
    assert meta["inputs"][1] == {"name": "labels", "dtype": "int64", "shape": ["n"]}
    session = ort.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])
    z = noise_for_seeds([7, 7], 100)
    a, b = session.run(["images"], {"z": z, "labels": np.array([0, 2])})[0]
    assert not np.array_equal(a, b)  # the label changes the image


def test_export_at_a_temperature_scales_the_noise_inside_the_graph(runs, tmp_path):
    plain = json.loads((export(runs["cond"], tmp_path, "c") / "model.json").read_text())
    assert plain["latent"]["temperature"] == 1.0
    target = export(runs["cond"], tmp_path, "warm", temperature=1.25)
    meta = json.loads((target / "model.json").read_text())
    assert meta["latent"]["temperature"] == 1.25
    assert meta["latent"]["distribution"] == "standard_normal"  # callers' noise is unchanged
    session = ort.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])
    z, labels = noise_for_seeds(range(4), 100), np.array([0, 1, 2, 0])
    G, _ = load_trained_generator(runs["cond"])
    with torch.no_grad():
        expected = G(torch.from_numpy(1.25 * z), torch.from_numpy(labels)).numpy()
        untempered = G(torch.from_numpy(z), torch.from_numpy(labels)).numpy()
    got = session.run(["images"], {"z": z, "labels": labels})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.abs(got - untempered).max() > 1e-3
    with pytest.raises(TrainError, match="must be a positive number"):
        export(runs["cond"], tmp_path, "cold", temperature=0.0)
    assert not (tmp_path / "cold").exists()  # refused before anything is written


def test_metrics_of_another_temperature_or_unreadable_are_refused(runs, tmp_path):
    (tmp_path / "t1.json").write_text(json.dumps({"fid": 1.0}))  # scored at temperature 1
    (tmp_path / "t2.json").write_text(json.dumps({"fid": 1.0, "temperature": 1.25}))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TrainError, match="at temperature 1, but this export is at 1.25"):
        export(runs["cond"], tmp_path / "m", "c", temperature=1.25, metrics_file=tmp_path / "t1.json")
    with pytest.raises(TrainError, match="at temperature 1.25, but this export is at 1"):
        export(runs["cond"], tmp_path / "m", "c", metrics_file=tmp_path / "t2.json")
    with pytest.raises(TrainError, match="cannot read the metrics file"):
        export(runs["cond"], tmp_path / "m", "c", metrics_file=tmp_path / "bad.json")
    assert not (tmp_path / "m").exists()  # nothing written
    target = export(runs["cond"], tmp_path / "m", "c", temperature=1.25, metrics_file=tmp_path / "t2.json")
    assert json.loads((target / "model.json").read_text())["metrics"]["temperature"] == 1.25


def test_versions_increase_and_never_overwrite(runs, tmp_path):
    assert export(runs["mlp"], tmp_path, "m").name == "1"
    assert export(runs["mlp"], tmp_path, "m").name == "2"
    with pytest.raises(TrainError, match="already exists"):
        export(runs["mlp"], tmp_path, "m", version=2)


def test_failed_export_leaves_nothing(runs, tmp_path):
    with pytest.raises(TrainError, match="not published"):
        export(runs["dcgan"], tmp_path, "strict", tolerance=-1.0)
    assert list((tmp_path / "strict").iterdir()) == []


def test_bad_name_and_unwritable_target(runs, tmp_path):
    with pytest.raises(TrainError, match="must match"):
        export(runs["dcgan"], tmp_path, "Bad Name")
    (tmp_path / "file").write_text("x")
    with pytest.raises(TrainError, match="cannot create"):
        export(runs["dcgan"], tmp_path / "file", "m")


def test_export_refuses_non_checkpoint(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"junk")
    with pytest.raises(TrainError, match="not a readable checkpoint"):
        export(tmp_path, tmp_path / "models", "m")


def test_model_json_records_the_command_and_each_resume(tmp_path):
    fit(tiny_config(tmp_path / "r", steps=2), progress=False, command="python -m train fit --steps 2")
    run = fit(tiny_config(tmp_path / "r", steps=3), resume=True, progress=False,
              command="python -m train fit --steps 3 --resume")
    fit(tiny_config(tmp_path / "r", steps=4), resume=True, progress=False,
        command="python -m train fit --steps 4 --resume")
    meta = json.loads((export(run, tmp_path / "models", "tiny") / "model.json").read_text())
    assert meta["training"]["command"] == "python -m train fit --steps 2"
    assert meta["training"]["resumed"] == ["python -m train fit --steps 3 --resume",
                                           "python -m train fit --steps 4 --resume"]
    assert meta["training"]["steps"] == 4
