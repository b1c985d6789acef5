"""The command line, run as a user runs it: one-line errors, sampling from both sources."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.training import tiny_config
from PIL import Image

from train.export import export
from train.loop import fit

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "train", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return fit(tiny_config(tmp_path_factory.mktemp("cli"), steps=2, conditional=True), progress=False)


def assert_one_line_error(result, text):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert text in lines[0]


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["fit", "--dataset", "mnist", "--data", "no/such/dir"], "not found"),
        (["fit", "--dataset", "folder", "--data", "."], "no images"),
        (["export", "no/such/run", "--name", "m"], "checkpoint not found"),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, text):
    assert_one_line_error(cli(*[tmp_path if a == "." else a for a in args]), text)


def test_truncated_dataset_file_is_one_line(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00")
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"")
    assert_one_line_error(cli("fit", "--data", tmp_path, "--out", tmp_path / "r"), "truncated")


def test_other_architecture_checkpoint_is_one_line(run_dir):
    assert_one_line_error(cli("fit", "--arch", "mlp", "--resume", "--out", run_dir), "'dcgan' checkpoint")


def test_export_target_exists_and_unwritable_output(run_dir, tmp_path):
    assert cli("export", run_dir, "--name", "m", "--models-dir", tmp_path).returncode == 0
    assert_one_line_error(cli("export", run_dir, "--name", "m", "--models-dir", tmp_path, "--version", 1),
                          "already exists")
    (tmp_path / "f").write_text("")
    assert_one_line_error(cli("fit", "--dataset", "arrays", "--data", "x.npz", "--out", tmp_path / "f" / "r"),
                          "not writable")


def test_sample_from_checkpoint_and_model_agree(run_dir, tmp_path):
    export(run_dir, tmp_path / "models", "c")
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    r1 = cli("sample", "--checkpoint", run_dir, "--seeds", "0-3", "--labels", "1", "--out", a)
    r2 = cli("sample", "--model", tmp_path / "models" / "c", "--seeds", "0-3", "--labels", "1", "--out", b)
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    pa, pb = np.asarray(Image.open(a)), np.asarray(Image.open(b))
    assert pa.shape == (2 + 2 * 30, 2 + 2 * 30)
    assert np.abs(pa.astype(int) - pb.astype(int)).max() <= 1  # torch vs onnxruntime rounding
    assert_one_line_error(cli("sample", "--checkpoint", run_dir, "--labels", "9", "--out", a), "labels")


def test_dry_run():
    result = cli("fit", "--dry-run", "--arch", "mlp")
    assert result.returncode == 0 and "dry run ok" in result.stdout


def test_sample_refuses_a_model_that_does_not_match_its_metadata(run_dir, tmp_path):
    target = export(run_dir, tmp_path / "models", "c")
    (target / "model.onnx").write_bytes((target / "model.onnx").read_bytes() + b"\0")
    assert_one_line_error(cli("sample", "--model", target, "--labels", "0", "--out", tmp_path / "x.png"),
                          "sha256")
