"""The reference bench's snapshots: one per whole epoch, and --reuse picking among them."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from train.errors import TrainError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("reference_dcgan", ROOT / "bench" / "reference_dcgan.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    images = np.random.default_rng(0).integers(0, 256, (128, 1, 28, 28), dtype=np.uint8)  # 2 batches an epoch
    returned = bench.train_reference(images, 3, None, None, 0, torch.device("cpu"), out)
    return out, returned


def test_every_whole_epoch_is_saved_and_listed(trained):
    out, returned = trained
    saved = json.loads((out / "timing.json").read_text())
    assert [s["label"] for s in saved] == ["epoch-1", "epoch-2", "epoch-3", "epochs"]
    assert [s["step"] for s in saved] == [2, 4, 6, 6]
    assert all(Path(s["path"]).is_file() for s in saved)
    seconds = [s["seconds"] for s in saved]
    assert seconds == sorted(seconds) and seconds[0] > 0
    assert [s.label for s in returned] == ["epochs"]  # the per-epoch ones are not scored by default


def test_reuse_picks_the_epoch_target_and_the_first_epoch_past_the_time(bench, trained):
    out, _ = trained
    saved = {s["label"]: s for s in json.loads((out / "timing.json").read_text())}
    just_under_two = saved["epoch-2"]["seconds"] - 1e-9
    epochs, timed = bench.reuse_snapshots(out, 1, just_under_two)
    assert (epochs.label, epochs.step, epochs.path) == ("epochs", 2, saved["epoch-1"]["path"])
    assert (timed.label, timed.step, timed.path) == ("time", 4, saved["epoch-2"]["path"])
    assert bench.reuse_snapshots(out, None, 0.0)[0].step == 2


def test_reuse_refuses_what_the_run_does_not_hold(bench, trained, tmp_path):
    out, _ = trained
    with pytest.raises(TrainError, match="no snapshot .* at 5 epochs"):
        bench.reuse_snapshots(out, 5, None)
    with pytest.raises(TrainError, match="less than the"):
        bench.reuse_snapshots(out, None, 10_000)
    with pytest.raises(TrainError, match="does not exist"):
        bench.reuse_snapshots(tmp_path, 1, None)
