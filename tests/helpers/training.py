"""Small synthetic datasets and configs for fast training tests."""

from pathlib import Path

import numpy as np

from train.config import TrainConfig


def tiny_npz(directory: Path, n: int = 32, size: int = 28, classes: int = 3) -> Path:
    """A .npz of n random-ish images with labels."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    path = Path(directory) / "tiny.npz"
    np.savez(path, images=images, labels=np.arange(n) % classes)
    return path


def tiny_config(tmp_path: Path, **overrides) -> TrainConfig:
    """A config that trains in well under a second a step on CPU."""
    values = dict(
        dataset="arrays", data=str(tiny_npz(tmp_path)), batch_size=8, width=8, steps=6,
        device="cpu", out=str(tmp_path / "run"), log_every=2, sample_count=4,
    )
    values.update(overrides)
    return TrainConfig(**values)
