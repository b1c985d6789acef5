"""Training throughput (images/s): this project's loop vs a plain reference loop.

The reference is the most direct PyTorch, pytorch/examples style: the same networks, a
DataLoader over a float TensorDataset with shuffling, sigmoid + BCELoss, no AMP, no
compile. Both run in this process on the same cores, interleaved (ours, reference, ours,
...) so drift in machine load hits both; the table reports medians and the ratio.

    python bench/train_throughput.py [--steps 200] [--repeats 3] [--data DIR]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # bench/reference_dcgan.py, run from anywhere

from reference_dcgan import reference_step  # noqa: E402

from train.config import TrainConfig  # noqa: E402
from train.data import load_mnist_like  # noqa: E402
from train.loop import fit  # noqa: E402
from train.models import Discriminator, Generator, NetworkSpec  # noqa: E402

WARMUP = 20


# The pytorch/examples DCGAN's discriminator, which both loops train (and the published figures
# measured): two strided convolutions, a flat linear head, no batch spread.
RECIPE_D: dict[str, Any] = {"d_depth": 2, "d_projection": "flat", "d_batch_std": False}


def ours(arch: str, data_args: dict, steps: int, batch: int, workdir: Path) -> float:
    """Steady-state images/s of train.loop.fit, read from its own metrics log."""
    out = Path(tempfile.mkdtemp(dir=workdir))
    # The reference loop's networks and update: no spectral norm, no weight average, and the
    # recipe's discriminator (RECIPE_D).
    cfg = TrainConfig(arch=arch, steps=WARMUP + steps, batch_size=batch, log_every=WARMUP,
                      device="cpu", out=str(out), spectral_norm=False, ema=0.0, **RECIPE_D,
                      **data_args)
    fit(cfg, progress=False)
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    images, seconds = 0, 0.0
    for prev, row in zip(rows, rows[1:], strict=False):  # the first window is the warm-up
        n = (int(row["step"]) - int(prev["step"])) * batch
        images, seconds = images + n, seconds + n / float(row["images_per_s"])
    return images / seconds


def reference(arch: str, images: np.ndarray, steps: int, batch: int) -> float:
    """Steady-state images/s of a plain pytorch/examples-style loop (bench/reference_dcgan.py's step)."""
    torch.manual_seed(0)
    spec = NetworkSpec(arch=arch, **RECIPE_D)
    netG, netD = Generator(spec), nn.Sequential(Discriminator(spec), nn.Sigmoid())
    criterion = nn.BCELoss()
    optD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    dataset = TensorDataset(torch.from_numpy(images).float() / 255.0)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True)
    done, t0 = 0, 0.0
    while done < WARMUP + steps:
        for (real,) in loader:
            if done == WARMUP:
                t0 = time.perf_counter()
            reference_step(netG, netD, criterion, optD, optG, real, spec.latent_size)
            done += 1
            if done == WARMUP + steps:
                break
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mnist",
                        help="MNIST IDX directory (random images of MNIST's shape if absent)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.data.is_dir():
            images = load_mnist_like("mnist", args.data).images
            data_args, source = {"dataset": "mnist", "data": str(args.data)}, "MNIST"
        else:
            images = np.random.default_rng(0).integers(0, 256, (60000, 1, 28, 28), dtype=np.uint8)
            np.save(workdir / "x.npy", images)
            data_args, source = {"dataset": "arrays", "data": str(workdir / "x.npy")}, "random"
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, data: {source}, "
              f"batch {args.batch_size}, {args.steps} timed steps x {args.repeats} repeats")
        print(f"{'arch':<6} {'ours img/s':>11} {'reference img/s':>16} {'ratio':>7}")
        for arch in ("mlp", "dcgan"):
            a, b = [], []
            for _ in range(args.repeats):
                a.append(ours(arch, data_args, args.steps, args.batch_size, workdir))
                b.append(reference(arch, images, args.steps, args.batch_size))
            ma, mb = statistics.median(a), statistics.median(b)
            print(f"{arch:<6} {ma:>11.0f} {mb:>16.0f} {ma / mb:>7.2f}")


if __name__ == "__main__":
    main()
