"""Reference baseline: the plain DCGAN recipe, trained here and scored like ours.

The networks are pytorch/examples' DCGAN in its native 28x28 layout and the loop is
theirs as written: sigmoid + BCELoss, Adam 2e-4 / (0.5, 0.999), batch 64, a DataLoader
over a float tensor with shuffling; no AMP, no weight average, no other change. The
reference trains until it has seen as many epochs as ours and run as long as ours did
(ours' wall-clock is read from its metrics.csv), saving its generator at each point. Ours
and both snapshots are then scored by train.evaluate with the same seeds and classifier.

    python bench/reference_dcgan.py --ours runs/mnist-dcgan [--epochs E] [--minutes M]
    python bench/reference_dcgan.py --ours models/mnist-dcgan --out runs/reference-mnist --reuse
    python bench/reference_dcgan.py --dataset mnist --epochs 0.02 --samples 1000   # smoke test

With --reuse nothing trains: the per-epoch snapshots of an earlier, longer run in --out are
scored instead (the time target takes the first whole epoch at or past it).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train.checkpoint import load_checkpoint  # noqa: E402
from train.classifier import WEIGHTS_DIR, load_classifier, load_splits  # noqa: E402
from train.errors import TrainError  # noqa: E402
from train.evaluate import Evaluator, Source, from_checkpoint, from_onnx  # noqa: E402
from train.export import checkpoint_path  # noqa: E402
from train.sample import read_model  # noqa: E402

NZ, NGF, NDF, BATCH = 100, 64, 64, 64


class ReferenceGenerator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(NZ, NGF * 4, 4, 1, 0, bias=False),
            nn.BatchNorm2d(NGF * 4), nn.ReLU(True),
            # (ngf*4) x 4 x 4
            nn.ConvTranspose2d(NGF * 4, NGF * 2, 3, 2, 1, bias=False),
            nn.BatchNorm2d(NGF * 2), nn.ReLU(True),
            # (ngf*2) x 7 x 7
            nn.ConvTranspose2d(NGF * 2, NGF, 4, 2, 1, bias=False),
            nn.BatchNorm2d(NGF), nn.ReLU(True),
            # ngf x 14 x 14
            nn.ConvTranspose2d(NGF, 1, 4, 2, 1, bias=False),
            nn.Sigmoid(),
            # 1 x 28 x 28, in [0, 1]
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.view(-1, NZ, 1, 1))


class ReferenceDiscriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(
            # 1 x 28 x 28
            nn.Conv2d(1, NDF, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            # ndf x 14 x 14
            nn.Conv2d(NDF, NDF * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(NDF * 2), nn.LeakyReLU(0.2, inplace=True),
            # (ndf*2) x 7 x 7
            nn.Conv2d(NDF * 2, NDF * 4, 3, 2, 1, bias=False),
            nn.BatchNorm2d(NDF * 4), nn.LeakyReLU(0.2, inplace=True),
            # (ndf*4) x 4 x 4
            nn.Conv2d(NDF * 4, 1, 4, 1, 0, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1)


def weights_init(m: nn.Module) -> None:
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


@dataclass
class Snapshot:
    """A saved reference generator: why it was taken, after how much training."""

    label: str  # epochs, time (the target reached) or stopped (--steps)
    step: int
    epochs: float
    seconds: float
    path: str


def reference_step(netG: nn.Module, netD: nn.Module, criterion: nn.Module, optimizerD: torch.optim.Optimizer,
                   optimizerG: torch.optim.Optimizer, real: torch.Tensor, latent_size: int) -> None:
    """One training step of pytorch/examples' DCGAN as written, on ``real``'s device.

    ``netD`` ends in a sigmoid and ``criterion`` is BCELoss; D is updated on ``real`` and on a
    batch of fakes from N(0, 1) noise of ``latent_size``, then G on the same fakes.
    """
    b = real.size(0)
    # (1) Update D: maximize log(D(x)) + log(1 - D(G(z)))
    netD.zero_grad()
    label = torch.full((b,), 1.0, device=real.device)
    errD_real = criterion(netD(real), label)
    errD_real.backward()
    noise = torch.randn(b, latent_size, device=real.device)
    fake = netG(noise)
    label.fill_(0.0)
    errD_fake = criterion(netD(fake.detach()), label)
    errD_fake.backward()
    optimizerD.step()
    # (2) Update G: maximize log(D(G(z)))
    netG.zero_grad()
    label.fill_(1.0)
    errG = criterion(netD(fake), label)
    errG.backward()
    optimizerG.step()


def train_reference(
    images: np.ndarray, epochs: float | None, seconds: float | None, max_steps: int | None,
    seed: int, device: torch.device, out: Path,
) -> list[Snapshot]:
    """Train until both targets (epochs, seconds) are met, snapshotting the generator at each."""
    torch.manual_seed(seed)
    netG, netD = ReferenceGenerator().to(device), ReferenceDiscriminator().to(device)
    netG.apply(weights_init)
    netD.apply(weights_init)
    criterion = nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    dataset = TensorDataset(torch.from_numpy(images).float() / 255.0)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True)
    per_epoch = len(loader)
    epoch_step = max(1, round(epochs * per_epoch)) if epochs is not None else None
    out.mkdir(parents=True, exist_ok=True)
    snapshots: list[Snapshot] = []
    step, paused, timed, start = 0, 0.0, False, time.perf_counter()

    def snapshot(label: str, elapsed: float) -> None:
        path = out / f"generator_{label}.pt"
        torch.save(netG.state_dict(), path)
        snapshots.append(Snapshot(label, step, step / per_epoch, elapsed, str(path)))
        (out / "timing.json").write_text(json.dumps([asdict(s) for s in snapshots], indent=2) + "\n")
        print(f"  {label}: step {step}, {step / per_epoch:.2f} epochs, {elapsed:.0f} s", flush=True)

    while True:
        for (real,) in loader:
            reference_step(netG, netD, criterion, optimizerD, optimizerG, real.to(device), NZ)
            step += 1

            if device.type == "cuda":
                torch.cuda.synchronize()  # honest timing: wait for the queued kernels
            elapsed = time.perf_counter() - start - paused
            t0 = time.perf_counter()
            if step % per_epoch == 0:
                # Every whole epoch, so that a later run of ours can be matched in time too.
                snapshot(f"epoch-{step // per_epoch}", elapsed)
            if step == epoch_step:
                snapshot("epochs", elapsed)
            if seconds is not None and elapsed >= seconds and not timed:
                snapshot("time", elapsed)
                timed = True
            epochs_done = epoch_step is None or step >= epoch_step
            time_done = seconds is None or elapsed >= seconds
            if (epochs_done and time_done) or step == max_steps:
                if not any(s.step == step and not s.label.startswith("epoch-") for s in snapshots):
                    snapshot("stopped", elapsed)
                return [s for s in snapshots if not s.label.startswith("epoch-")]
            paused += time.perf_counter() - t0  # saving snapshots is not training time


def reuse_snapshots(out: Path, epochs: float | None, seconds: float | None) -> list[Snapshot]:
    """The snapshots an earlier run left in ``out`` that meet the targets, instead of training.

    The epochs target takes the snapshot at exactly that many epochs; the time target the
    first whole-epoch snapshot at or past it (the reference never gets less time than ours).
    """
    timing = out / "timing.json"
    if not timing.is_file():
        raise TrainError(f"--reuse: {timing} does not exist; run without --reuse first")
    saved = [Snapshot(**s) for s in json.loads(timing.read_text())]
    chosen = []
    if epochs is not None:
        match = [s for s in saved if abs(s.epochs - epochs) < 1e-6]
        if not match:
            raise TrainError(f"--reuse: no snapshot in {timing} at {epochs:g} epochs")
        chosen.append(replace(match[0], label="epochs"))
    if seconds is not None:
        later = [s for s in saved if s.label.startswith("epoch-") and s.seconds >= seconds]
        if not later:
            longest = max((s.seconds for s in saved), default=0.0)
            raise TrainError(f"--reuse: the run in {out} trained {longest / 60:.1f} minutes, "
                             f"less than the {seconds / 60:.1f} asked for")
        chosen.append(replace(min(later, key=lambda s: s.seconds), label="time"))
    return chosen


def reference_source(path: Path) -> Source:
    """A saved reference generator as a plain function of z, in eval mode on the CPU."""
    netG = ReferenceGenerator()
    netG.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    netG.eval()

    @torch.no_grad()
    def generate(z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        return netG(torch.from_numpy(z)).numpy()

    return Source(str(path), generate, NZ, 0, {})


@dataclass
class Ours:
    """Our generator, with how many epochs it trained and for how long (None: unknown)."""

    source: Source
    epochs: float
    seconds: float | None


def drop(values: dict, keys: set[str]) -> dict:
    return {k: v for k, v in values.items() if k not in keys}


def run_seconds(metrics_csv: Path | None, batch: int, steps: int) -> float | None:
    """Wall-clock of a run's first `steps` steps, from its metrics.csv (steps x batch / images_per_s)."""
    if metrics_csv is None or not metrics_csv.is_file():
        return None
    total, previous = 0.0, 0
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            # Rows replayed after a resume count once; rows past the export are another model's.
            if previous < step <= steps:
                total += (step - previous) * batch / float(row["images_per_s"])
                previous = step
    return total


def load_ours(path: Path) -> Ours:
    """A run directory / checkpoint, or an exported model directory."""
    if checkpoint_path(path).is_file():
        state = load_checkpoint(checkpoint_path(path))
        config, steps, size = state["config"], state["step"], state["dataset"]["size"]
        source, metrics = from_checkpoint(path), checkpoint_path(path).parent / "metrics.csv"
    else:
        meta = read_model(path).meta  # checked as the service checks it
        config, steps, size = meta["training"]["config"], meta["training"]["steps"], meta["dataset"]["size"]
        # The run that made the model, if it is still where training left it (a resume may
        # have changed how long it trains; any other difference means another run).
        run, loose = Path(config["out"]), {"epochs", "steps"}
        same = (run / "config.json").is_file() and drop(json.loads((run / "config.json").read_text()),
                                                          loose) == drop(config, loose)
        source, metrics = from_onnx(path), run / "metrics.csv" if same else None
    batch = config["batch_size"]
    return Ours(source, steps / (size // batch), run_seconds(metrics, batch, steps))


def main() -> None:
    try:
        compare()
    except TrainError as e:
        sys.exit(f"error: {e}")


def compare() -> None:
    """Train the reference as the arguments say, then score it next to ours."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ours", type=Path, help="our run directory (or checkpoint) or models/<name>[/<v>]")
    parser.add_argument("--dataset", choices=["mnist", "fashion-mnist"],
                        help="default: the dataset ours trained on, else mnist")
    parser.add_argument("--data", type=Path, help="IDX directory (default: ../shared/data/<dataset>)")
    parser.add_argument("--epochs", type=float, help="default: as many as ours trained")
    parser.add_argument("--minutes", type=float, help="default: as long as ours trained")
    parser.add_argument("--steps", type=int, help="stop after this many steps whatever else (smoke tests)")
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "reference-dcgan")
    parser.add_argument("--reuse", action="store_true",
                        help="score the snapshots a longer earlier run saved in --out instead of training")
    args = parser.parse_args()

    ours = load_ours(args.ours) if args.ours else None
    dataset = args.dataset or (ours.source.config.get("dataset") if ours else None) or "mnist"
    epochs = args.epochs if args.epochs is not None else (ours.epochs if ours else None)
    minutes = args.minutes if args.minutes is not None else (
        ours.seconds / 60 if ours and ours.seconds is not None else None)
    if epochs is None and minutes is None:
        parser.error("give --epochs and/or --minutes (or --ours to take them from)")
    data_dir = args.data or ROOT.parent / "shared" / "data" / dataset
    train, test = load_splits(dataset, data_dir, None)
    device = torch.device(args.device)
    targets = []
    if epochs is not None:
        targets.append(f"{epochs:.2f} epochs" + (" (as ours)" if args.epochs is None else ""))
    if minutes is not None:
        targets.append(f"{minutes:.1f} minutes" + (" (as ours)" if args.minutes is None else ""))
    print(f"reference DCGAN on {dataset}, {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads: trains until {' and '.join(targets)}", flush=True)
    seconds = minutes * 60 if minutes is not None else None
    if args.reuse:
        snapshots = reuse_snapshots(args.out, epochs, seconds)
    else:
        snapshots = train_reference(train.images, epochs, seconds, args.steps, args.seed, device, args.out)

    classifier = WEIGHTS_DIR / f"{dataset}.pt"
    evaluator = Evaluator(load_classifier(classifier), test, train, args.samples)
    rows = []
    if ours:
        rows.append(("ours", ours.epochs, ours.seconds, evaluator.score(
            ours.source.generate, ours.source.latent_size, ours.source.num_classes)))
    for snap in snapshots:
        source = reference_source(Path(snap.path))
        rows.append((f"reference ({snap.label} target)" if snap.label != "stopped"
                     else "reference (--steps reached)", snap.epochs, snap.seconds,
                     evaluator.score(source.generate, source.latent_size)))
    rows.append((f"floor: {evaluator.floor_samples} train images", None, None, evaluator.floor))

    print(f"\n{dataset} test split, {args.samples} samples (seeds 0-{args.samples - 1}), "
          f"classifier {classifier.name}" + (f"; ours: {ours.source.name}" if ours else ""))
    print(f"{'':<32} {'epochs':>7} {'minutes':>8} {'FID':>8} {'IS':>6} {'prec':>6} {'recall':>6} "
          f"{'min cls':>8} {'max cls':>8}")
    for name, ep, sec, s in rows:
        print(f"{name:<32} {f'{ep:.2f}' if ep is not None else '-':>7} "
              f"{f'{sec / 60:.1f}' if sec is not None else '-':>8} {s['fid']:>8.3f} "
              f"{s['inception_score']:>6.3f} {s['precision']:>6.3f} {s['recall']:>6.3f} "
              f"{s['class_share_min']:>8.2%} {s['class_share_max']:>8.2%}")


if __name__ == "__main__":
    main()
