"""Slow: a few hundred DCGAN steps on real MNIST stay balanced and give varied samples."""

import csv
from pathlib import Path

import numpy as np
import pytest

from train.config import TrainConfig
from train.loop import fit
from train.sample import images_from_checkpoint

MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not MNIST.is_dir(), reason=f"real MNIST not present at {MNIST}")
def test_dcgan_learns_on_mnist(tmp_path):
    cfg = TrainConfig(dataset="mnist", data=str(MNIST), arch="dcgan", steps=400, log_every=50,
                      device="cpu", out=str(tmp_path / "run"))
    out = fit(cfg, progress=False)
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    late = rows[-2:]  # the last 100 steps
    for r in late:
        assert 0.02 < float(r["d_real"]) < 0.98, r
        assert 0.02 < float(r["d_fake"]) < 0.98, r
    images = images_from_checkpoint(out, list(range(32)), None)[:, 0]
    assert 0.03 < images.mean() < 0.5  # neither blank nor saturated
    spread = np.abs(images[:, None] - images[None]).mean(axis=(2, 3))
    # Mode collapse makes every pair (nearly) identical: the typical pair must differ.
    assert np.median(spread[~np.eye(32, dtype=bool)]) > 0.01
