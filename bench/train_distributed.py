"""Training throughput (images/s) of 1 process against N processes under torchrun.

The same `fit` runs on the same synthetic data (random 28x28 images, enough that no epoch
ends inside the measured steps, so no checkpoint or sample grid is timed), with the same
global batch: `python -m train fit` (one process; torch's default threads, one per core)
and `torchrun --standalone --nproc-per-node N -m train fit` (torchrun gives each process
OMP_NUM_THREADS=1). Also one process held to one thread, the work of each of the N. Runs
alternate (1, N, 1 thread, 1, N, ...) so that drift in the machine's load hits each; the
table reports medians of the steady-state images/s read from each run's metrics.csv.

    python bench/train_distributed.py [--processes 2] [--steps 40] [--repeats 3] [--arch dcgan]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 10  # steps of the first metrics window, left out


def images_per_s(run_dir: Path, batch: int) -> float:
    """Steady-state images/s from a run's metrics.csv (the first window is the warm-up)."""
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    images, seconds = 0, 0.0
    for prev, row in zip(rows, rows[1:], strict=False):
        n = (int(row["step"]) - int(prev["step"])) * batch
        images, seconds = images + n, seconds + n / float(row["images_per_s"])
    return images / seconds


def run(kind: str, processes: int, data: Path, workdir: Path, args: argparse.Namespace) -> float:
    """One training run of `kind` (one, one-thread, torchrun); its images/s."""
    out = Path(tempfile.mkdtemp(dir=workdir)) / "run"
    fit = ["fit", "--dataset", "arrays", "--data", str(data), "--arch", args.arch,
           "--batch-size", str(args.batch_size), "--steps", str(WARMUP + args.steps),
           "--log-every", str(WARMUP), "--ema", "0", "--device", "cpu", "--out", str(out), "--no-progress"]
    env = dict(os.environ)
    if kind == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", str(processes), "-m", "train", *fit]
    else:
        command = [sys.executable, "-m", "train", *fit]
        if kind == "one-thread":
            env["OMP_NUM_THREADS"] = "1"
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return images_per_s(out, args.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="measured steps per run (after the warm-up)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arch", default="dcgan", choices=["dcgan", "mlp"])
    parser.add_argument("--batch-size", type=int, default=64, help="the global batch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        n = args.batch_size * (WARMUP + args.steps + 1)  # no epoch ends inside the run
        data = workdir / "data.npz"
        rng = np.random.default_rng(0)
        np.savez(data, images=rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        kinds = ["one", "torchrun", "one-thread"]
        figures: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(args.repeats):
            for kind in kinds:
                figures[kind].append(run(kind, args.processes, data, workdir, args))
    one, many, single = (statistics.median(figures[k]) for k in kinds)
    print(f"{args.arch}, global batch {args.batch_size}, {args.steps} steps x {args.repeats} runs, "
          f"{os.cpu_count()} CPUs")
    print(f"{'1 process (default threads)':<34}{one:>10.1f} images/s")
    print(f"{f'{args.processes} processes (1 thread each)':<34}{many:>10.1f} images/s")
    print(f"{'1 process (1 thread)':<34}{single:>10.1f} images/s")
    print(f"{args.processes} processes / 1 process: {many / one:.2f}; "
          f"{args.processes} processes / 1 process of 1 thread: {many / single:.2f}")
    for kind in kinds:
        print(f"  {kind}: " + ", ".join(f"{v:.1f}" for v in figures[kind]))


if __name__ == "__main__":
    main()
