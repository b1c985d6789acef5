"""The training loop: read top to bottom. `fit(cfg)` trains, checkpoints and logs a run.

A run directory holds config.json, checkpoint.pt (rewritten atomically each epoch, at the
end and on Ctrl-C or SIGTERM), samples/epoch_NNNN.png (fixed seeds), metrics.csv and loss.png.
Only one run may use a directory at a time. Resuming is exact: the data order of each epoch
is a function of (seed, epoch), and the noise generator's state, the optimizers and the
step counter live in the checkpoint, which is only ever taken between two steps (a signal
during a step stops the run after it). So a run stopped by Ctrl-C or SIGTERM and resumed
ends bit-identical to one never stopped, and so does one killed outright (SIGKILL, a crash,
a power cut), which loses the steps since the last epoch's checkpoint and redoes them;
metrics.csv drops the rows of steps the checkpoint does not hold when a run resumes.

Under torchrun (train/distributed.py, docs/training-distributed.md) each process trains on
its rows of every global batch with DistributedDataParallel networks; only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import fcntl
import io
import json
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from serve.latent import labels_for_seeds, noise_for_seeds
from train.checkpoint import load_checkpoint, save_checkpoint
from train.config import TrainConfig
from train.data import ImageSet, load_dataset
from train.distributed import SINGLE, Shard
from train.errors import TrainError
from train.files import atomic_write, remove_temporaries
from train.images import save_grid
from train.models import Discriminator, Generator, NetworkSpec, check_spec

# Samples the weight average's BatchNorm statistics are recomputed from before each save.
CALIBRATION_SAMPLES, CALIBRATION_BATCH = 12_800, 256

METRIC_FIELDS = ["step", "epoch", "loss_d", "loss_g", "d_real", "d_fake", "images_per_s"]


class Interrupted(Exception):
    """Training stopped by Ctrl-C or SIGTERM after its checkpoint was saved."""


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold the run directory exclusively: a second run on it would interleave checkpoints."""
    with (out / ".lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainError(f"{out} is in use by another training run") from None
        yield


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM (kill, a scheduler's preemption) as KeyboardInterrupt,
    except during a training step: a signal that arrives inside one takes effect when the step
    (and its epoch's checkpoint, at an epoch's end) is over, so the checkpoint saved on the way
    out never holds half a step. A second signal inside the same step stops at once, and the
    step is marked torn: nothing is saved then, the last checkpoint stays.
    """

    def __init__(self, shard: Shard = SINGLE) -> None:
        self.stepping = False  # inside step()
        self.pending = False  # a signal arrived during this step
        self.torn = False  # a KeyboardInterrupt was raised in the middle of a step
        self.shard = shard  # processes that stop together

    def handle(self, signum: int, frame: object) -> None:
        """The signal handler."""
        if self.stepping and not self.pending:
            self.pending = True
            # os.write, not print: the handler may run while the main thread is printing.
            os.write(2, b"\nstopping after this step (a second signal stops at once)\n")
            return
        if self.stepping:
            self.torn = True
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """One training step with its logging and, at an epoch's end, its checkpoint, during
        which a first signal waits."""
        self.stepping = True
        agreed = None
        try:
            yield
            if self.shard.distributed:
                # Every process stops after the same step, if any of them got a signal (torchrun
                # passes its SIGTERM or SIGINT on to all). A signal from here on is the next step's.
                agreed, self.pending = self.shard.any(self.pending), False
        finally:
            self.stepping = False
        if self.pending if agreed is None else agreed:
            self.pending = False
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Handle SIGINT and SIGTERM while the block runs (only the main thread gets signals)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():  # None: a handler not set from Python
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def pick_device(name: str) -> torch.device:
    """cpu, cuda, or auto (cuda when present)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda asked for, but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise TrainError(f"unknown device {name!r} (choose cpu, cuda or auto)")
    return torch.device(name)


def spec_for(cfg: TrainConfig, data: ImageSet) -> NetworkSpec:
    """The networks' spec for a config and the data it trains on."""
    c, h, w = data.shape
    if h != w:
        raise TrainError(f"images must be square, got {h}x{w}")
    if not cfg.mode_seeking >= 0:
        raise TrainError(f"--mode-seeking must be 0 or more, got {cfg.mode_seeking}")
    if not cfg.class_loss >= 0:
        raise TrainError(f"--class-loss must be 0 or more, got {cfg.class_loss}")
    if not cfg.class_margin >= 0:
        raise TrainError(f"--class-margin must be 0 or more, got {cfg.class_margin}")
    if cfg.class_margin and not cfg.class_loss:
        raise TrainError("--class-margin shapes the class loss: it needs --class-loss WEIGHT too")
    if cfg.class_loss and not cfg.conditional:
        raise TrainError("--class-loss needs --conditional: it scores images against their labels")
    if cfg.conditional and data.labels is None:
        raise TrainError(f"--conditional needs labels, and dataset {data.name!r} has none")
    spec = NetworkSpec(
        arch=cfg.arch, latent_size=cfg.latent_size, channels=c, image_size=h,
        num_classes=len(data.classes) if cfg.conditional else 0, width=cfg.width,
        spectral_norm=cfg.spectral_norm, d_depth=cfg.d_depth,
        d_projection=cfg.d_projection, d_batch_std=cfg.d_batch_std,
        d_classes=cfg.conditional and cfg.class_loss > 0,
    )
    try:
        check_spec(spec)
    except ValueError as e:
        raise TrainError(str(e)) from None
    return spec


def check_shardable(cfg: TrainConfig, shard: Shard) -> None:
    """Refuse a global batch that the processes cannot split as one process would train it."""
    if not shard.distributed:
        return
    local = shard.local_batch(cfg.batch_size)
    world = shard.world
    if cfg.mode_seeking and local % 2:
        raise TrainError(
            f"--mode-seeking pairs samples i and i + n/2 of the batch: with {world} processes "
            f"--batch-size must be a multiple of {2 * world} so that each process holds whole pairs"
        )
    if cfg.d_batch_std and cfg.arch == "dcgan" and cfg.batch_size % 4 == 0 and local % 4:
        raise TrainError(
            f"--d-batch-std compares groups of 4 samples of the batch: with {world} processes "
            f"--batch-size must be a multiple of {4 * world} so that each process holds whole groups"
        )


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of one epoch, a pure function of (seed, epoch) so resume replays it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def d_loss(kind: str, real: torch.Tensor, fake: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Discriminator loss on logits (the sigmoid lives inside BCE-with-logits)."""
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return F.binary_cross_entropy_with_logits(
        real, torch.full_like(real, 1.0 - smoothing)
    ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))


def g_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss (BCE towards 'real'), or the hinge generator loss."""
    if kind == "hinge":
        return -fake.mean()
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def mode_seeking_term(fake: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """1 / (mean |G(z1) - G(z2)| / mean |z1 - z2|) over pairs (i, i + n/2) of a batch.

    Mao et al. (2019), "Mode Seeking GANs": small when two noises give images as far apart as
    the noises are; large when the generator maps different noises to the same image.
    """
    half = fake.shape[0] // 2
    images = (fake[:half] - fake[half : 2 * half]).abs().mean()
    noises = (z[:half] - z[half : 2 * half]).abs().mean()
    return 1.0 / (images / noises + 1e-5)


def shared_mode_seeking_term(fake: torch.Tensor, z_all: torch.Tensor, shard: Shard) -> torch.Tensor:
    """mode_seeking_term of the global batch, from this process's rows `fake` of it.

    Rows are dealt r, r + world, ... and each process holds an even number of them, so the
    pairs (i, i + n/2) of the global batch are pairs (j, j + n_local/2) of one process. The
    noise distance comes from the global noise every process draws; the image distance is the
    sum over processes. The returned value is the global term; its gradient is `world` times
    that of this process's share, because DistributedDataParallel averages gradients over
    processes where the global term needs their sum.
    """
    half, world = fake.shape[0] // 2, shard.world
    gaps = (fake[:half] - fake[half : 2 * half]).abs()
    mine = gaps.sum()
    images = (mine + (shard.sum(mine.detach()) - mine.detach())) / (gaps.numel() * world)
    n_half = z_all.shape[0] // 2
    noises = (z_all[:n_half] - z_all[n_half : 2 * n_half]).abs().mean()
    term = 1.0 / (images / noises + 1e-5)
    return world * term - (world - 1) * term.detach()


def class_term(logits: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """The generator's class loss: cross-entropy (margin 0), or the hinge
    mean(max(0, margin - (logit of the label - the largest other logit)))."""
    if not margin:
        return F.cross_entropy(logits, labels)
    asked = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
    return F.relu(margin - (asked - others)).mean()


class Run:
    """The state of one training run: networks, optimizers, noise RNG, step."""

    def __init__(
        self, cfg: TrainConfig, spec: NetworkSpec, device: torch.device, about: dict | None = None
    ):
        self.cfg, self.spec, self.device = cfg, spec, device
        self.about = about or {}  # dataset, classes, command: carried into model.json
        torch.manual_seed(cfg.seed)
        self.G = Generator(spec).to(device)
        self.D = Discriminator(spec).to(device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False) if cfg.ema else None
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=betas)
        self.noise = torch.Generator(device=device).manual_seed(cfg.seed)
        self.step = 0
        # What the training step calls: the networks themselves, or their DDP wrappers.
        self.shard: Shard = SINGLE
        self.G_train: nn.Module = self.G
        self.D_train: nn.Module = self.D

    def distribute(self, shard: Shard) -> None:
        """Train as one of shard.world processes: DistributedDataParallel networks.

        Called after a checkpoint is loaded, on identical weights in every process (the same
        seed or the same checkpoint; DDP broadcasts rank 0's at construction anyway). self.G
        and self.D stay the plain networks, so checkpoints hold unwrapped state dicts that any
        number of processes can resume.
        """
        if not shard.distributed:
            return
        self.shard = shard
        if self.device.type == "cuda":
            # Batch statistics of the global batch, as one process computes them: every
            # process's BatchNorm sees the same mean and variance. SyncBatchNorm keeps the
            # parameter and buffer names, so checkpoints are unchanged. It runs on GPUs only; on
            # CPU each process's BatchNorm normalises its own rows (docs/training-distributed.md).
            # The weight average was copied from the plain generator, and keeps plain BatchNorm:
            # its statistics are recomputed on rank 0 alone.
            self.G = nn.SyncBatchNorm.convert_sync_batchnorm(self.G)
            self.D = nn.SyncBatchNorm.convert_sync_batchnorm(self.D)
        ids = [self.device.index] if self.device.type == "cuda" else None
        # broadcast_buffers=False: by default DDP copies rank 0's buffers to every process at
        # the start of each forward, and D runs three forwards a step (real, fake for D's loss,
        # fake again for G's). Those in-place copies would overwrite buffers autograd may have
        # saved between a forward and its backward (spectral norm's power-iteration vectors)
        # and cost a collective each time, for nothing: spectral norm's vectors are functions
        # of the weights, which are identical everywhere; SyncBatchNorm's running statistics
        # are the global batch's; and CPU BatchNorm's running statistics, which differ per
        # process, are only ever used from rank 0 (its samples and checkpoint; the weight
        # average's are recomputed from its own outputs before each save).
        # find_unused_parameters stays False: every parameter of D gets a gradient in D's one
        # backward (real and fake logits summed into one loss), and every parameter of G in G's.
        # (torch 2.13 deprecates the name for forward_sync_buffers, which older releases lack and
        # which would still copy the buffers at construction; the behaviour meant is the same.)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
            self.G_train = DistributedDataParallel(self.G, device_ids=ids, broadcast_buffers=False)
            self.D_train = DistributedDataParallel(self.D, device_ids=ids, broadcast_buffers=False)

    def state(self) -> dict:
        return {
            "config": self.cfg.to_dict(),
            "spec": self.spec.to_dict(),
            "step": self.step,
            "generator": self.G.state_dict(),
            "discriminator": self.D.state_dict(),
            "ema": self.G_ema.state_dict() if self.G_ema is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "noise_rng": self.noise.get_state(),
            **self.about,
        }

    def load(self, state: dict) -> None:
        try:
            self.G.load_state_dict(state["generator"])
            self.D.load_state_dict(state["discriminator"])
            if self.G_ema is not None:
                self.G_ema.load_state_dict(state["ema"] or state["generator"])
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise TrainError(f"checkpoint does not fit the networks: {str(e).splitlines()[0]}") from None
        self.noise.set_state(state["noise_rng"])
        self.step = int(state["step"])

    def sampler(self) -> Generator:
        """The generator to sample and export: the weight average when there is one."""
        return self.G_ema if self.G_ema is not None else self.G

    def update_ema(self) -> None:
        # Warm up the average: early on, a fixed 0.999 would keep mostly the random init.
        decay = min(self.cfg.ema, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(
                list(self.G_ema.parameters()), list(self.G.parameters()), 1.0 - decay
            )
            for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
                b_ema.copy_(b)

    def settle_ema(self) -> None:
        """Give the weight average BatchNorm statistics of its own before it is saved or sampled.

        The average's weights are a mean over many steps, but update_ema copies the statistics
        of the latest trained generator, which belong to other weights. Measured on MNIST
        (docs/evaluation.md), recomputing them from the average's own outputs lowers FID and
        raises recall. The next training step copies the trained generator's again, so
        training, and resuming it, are unchanged.
        """
        if self.G_ema is not None:
            recalibrate_batchnorm(self.G_ema, self.spec, self.device, self.cfg.seed)

    def train_step(self, real: torch.Tensor, labels: torch.Tensor | None) -> dict:
        """One discriminator step and one generator step on a batch in [0, 1].

        Across processes, `real` (and `labels`) are this process's rows of the global batch,
        and the noise and labels of the whole global batch are drawn in every process from
        the same generator, which each then takes its rows of: every process's noise stream
        stays where one process's would be, and together they train on what one process would.
        """
        cfg, shard = self.cfg, self.shard
        n = real.shape[0] * shard.world  # the global batch
        z_all = torch.randn(n, cfg.latent_size, generator=self.noise, device=self.device)
        labels_all = (
            torch.randint(self.spec.num_classes, (n,), generator=self.noise, device=self.device)
            if self.spec.num_classes else None
        )
        if cfg.mode_seeking and labels_all is not None:
            # The term compares pairs (i, i + n/2) drawn for one class.
            half = n // 2
            labels_all[half : 2 * half] = labels_all[:half]
        z = shard.rows(z_all)
        fake_labels = shard.rows(labels_all) if labels_all is not None else None
        amp = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda" else contextlib.nullcontext()
        )
        classes = self.spec.d_classes
        with amp:
            fake = self.G_train(z, fake_labels)
            if classes:
                out_real, class_real = self.D_train(real, labels, classes=True)
            else:
                out_real = self.D_train(real, labels)
            out_fake = self.D_train(fake.detach(), fake_labels)
            loss_d = d_loss(cfg.loss, out_real.float(), out_fake.float(), cfg.label_smoothing)
            if classes:
                # The class head learns from real images only: learning from generated ones
                # would teach it to accept whatever the generator draws for a label.
                loss_d = loss_d + cfg.class_loss * F.cross_entropy(class_real.float(), labels)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()

        # D's own weight gradients are not needed for the generator step: freezing D skips
        # computing them (about a third of D's backward pass). Across processes D is called
        # unwrapped here: it has nothing to all-reduce in this backward, and its DDP wrapper
        # would otherwise expect one. G's wrapper all-reduces G's gradients, which reach it
        # through this D.
        self.D.requires_grad_(False)
        with amp:
            if classes:
                out_gen, class_gen = self.D(fake, fake_labels, classes=True)
            else:
                out_gen = self.D(fake, fake_labels)
            loss_g = g_loss(cfg.loss, out_gen.float())
        total_g = loss_g
        if classes:
            total_g = total_g + cfg.class_loss * class_term(class_gen.float(), fake_labels, cfg.class_margin)
        if cfg.mode_seeking and n >= 2:
            if shard.distributed:
                total_g = total_g + cfg.mode_seeking * shared_mode_seeking_term(fake.float(), z_all, shard)
            else:
                total_g = total_g + cfg.mode_seeking * mode_seeking_term(fake.float(), z)
        self.opt_g.zero_grad(set_to_none=True)
        total_g.backward()
        self.opt_g.step()
        self.D.requires_grad_(True)
        if self.G_ema is not None:
            self.update_ema()
        self.step += 1
        return {
            "loss_d": loss_d.detach(), "loss_g": loss_g.detach(),
            "d_real": torch.sigmoid(out_real.detach().float()).mean(),
            "d_fake": torch.sigmoid(out_fake.detach().float()).mean(),
        }

    @torch.no_grad()
    def samples(self, seeds: list[int]) -> np.ndarray:
        """Images for seeds under the latent spec (labels cycle through the classes)."""
        G = self.sampler()
        was_training = G.training
        G.eval()
        z = torch.from_numpy(noise_for_seeds(seeds, self.spec.latent_size)).to(self.device)
        k = self.spec.num_classes
        labels = torch.from_numpy(labels_for_seeds(seeds, k)).to(self.device) if k else None
        images = G(z, labels).float().cpu().numpy()
        G.train(was_training)
        return images


@torch.no_grad()
def recalibrate_batchnorm(
    G: Generator, spec: NetworkSpec, device: torch.device, seed: int,
    samples: int = CALIBRATION_SAMPLES, batch: int = CALIBRATION_BATCH,
) -> None:
    """Recompute G's BatchNorm running statistics as exact averages over its own outputs.

    The noise (and labels) come from their own generator seeded by `seed`, so the result is a
    function of G's weights alone and the training noise stream is untouched.
    """
    norms = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    noise = torch.Generator(device=device).manual_seed(seed)
    was_training = G.training
    G.train()
    try:
        for start in range(0, samples, batch):
            n = min(batch, samples - start)
            z = torch.randn(n, spec.latent_size, generator=noise, device=device)
            labels = (
                torch.randint(spec.num_classes, (n,), generator=noise, device=device)
                if spec.num_classes else None
            )
            G(z, labels)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        G.train(was_training)


def check_writable(directory: Path) -> None:
    """Fail early, with one line, if the output directory cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise TrainError(f"output directory {directory} is not writable: {e.strerror}") from None


def fit(
    cfg: TrainConfig, resume: bool = False, progress: bool = True, command: str | None = None,
    shard: Shard = SINGLE,
) -> Path:
    """Train (or resume) a run into cfg.out; returns the run directory.

    `shard`: this process's place among torchrun's processes (train/distributed.py). Only
    rank 0 checks, locks and writes the run directory; the others only read it.
    """
    out = Path(cfg.out)
    if not shard.distributed:
        check_writable(out)
        with run_lock(out), StopSignals().installed() as stops:
            # Under the lock no other run writes here: a temporary file is a dead run's.
            for directory in (out, out / "samples"):
                remove_temporaries(directory)
            return _fit(cfg, out, resume, progress, command, stops, shard)
    with contextlib.ExitStack() as stack:
        problem = None
        if shard.writes:
            try:
                check_writable(out)
                stack.enter_context(run_lock(out))
            except TrainError as e:
                problem = e
        # Every process learns whether rank 0 could take the directory, and stops with it.
        if shard.any(problem is not None):
            raise problem or TrainError(f"process 0 could not use {out}: see its error")
        stops = stack.enter_context(StopSignals(shard).installed())
        if shard.writes:
            for directory in (out, out / "samples"):
                remove_temporaries(directory)
        return _fit(cfg, out, resume, progress, command, stops, shard)


def _fit(
    cfg: TrainConfig, out: Path, resume: bool, progress: bool, command: str | None, stops: StopSignals,
    shard: Shard,
) -> Path:
    ckpt_path = out / "checkpoint.pt"
    state = None
    if resume:
        state = load_checkpoint(ckpt_path)
        saved = TrainConfig.from_dict(state["config"])
        if saved.arch != cfg.arch:
            raise TrainError(
                f"{ckpt_path} is a {saved.arch!r} checkpoint, but --arch is {cfg.arch!r}"
            )
        # The checkpoint's config is authoritative; only how long to train may change.
        saved.epochs, saved.steps, saved.out = cfg.epochs, cfg.steps, cfg.out
        saved.device, saved.data = cfg.device, cfg.data or saved.data
        cfg = saved
    elif ckpt_path.exists():
        raise TrainError(f"{out} already holds a run: pass --resume, or choose another --out")

    data = load_dataset(cfg.dataset, cfg.data, "train", cfg.image_size, cfg.channels, cfg.download)
    spec = spec_for(cfg, data)
    device = pick_device(cfg.device)
    if device.type == "cuda" and shard.distributed:
        device = torch.device(shard.device)  # this process's own GPU
    check_shardable(cfg, shard)
    about = {
        "dataset": {"name": cfg.dataset, "size": len(data)},
        "classes": data.classes,
        "command": state["command"] if state else command,
        # How each resume was asked for: with the first command, what trained the model.
        "resumed": [*state["resumed"], command] if state else [],
    }
    run = Run(cfg, spec, device, about)
    if state is not None:
        if NetworkSpec.from_dict(state["spec"]) != spec:
            raise TrainError(f"{ckpt_path} was trained with {state['spec']}, not {spec.to_dict()}")
        run.load(state)
    run.distribute(shard)
    saved_step = run.step if state is not None else None  # the step checkpoint.pt holds
    writes = shard.writes
    if writes:
        atomic_write(out / "config.json", (json.dumps(cfg.to_dict(), indent=2) + "\n").encode())

    images = torch.from_numpy(data.images).to(device)
    labels = torch.from_numpy(data.labels).to(device) if spec.num_classes else None
    per_epoch = len(data) // cfg.batch_size
    if per_epoch == 0:
        raise TrainError(f"the dataset has {len(data)} images, fewer than one batch ({cfg.batch_size})")
    total = cfg.steps if cfg.steps is not None else cfg.epochs * per_epoch
    sample_seeds = list(range(cfg.sample_count))
    metrics = MetricsLog(out / "metrics.csv", run.step) if writes else None
    bar = tqdm(total=total, initial=run.step, disable=not (progress and writes), unit="step",
               dynamic_ncols=True)
    order, order_epoch = None, -1
    window, t0 = [], time.perf_counter()
    try:
        while run.step < total:
            with stops.step():
                epoch, i = divmod(run.step, per_epoch)
                if epoch != order_epoch:
                    order, order_epoch = epoch_order(cfg.seed, epoch, len(data)).to(device), epoch
                # This process's rows of the global batch (all of it for one process).
                idx = shard.rows(order[i * cfg.batch_size : (i + 1) * cfg.batch_size])
                real = images[idx].float().div_(255.0)
                stats = run.train_step(real, labels[idx] if labels is not None else None)
                window.append(stats)
                end_of_epoch = run.step % per_epoch == 0
                if run.step % cfg.log_every == 0 or end_of_epoch or run.step == total:
                    window = shard.average_stats(window)  # the global batch's means
                    if metrics is not None:
                        row = metrics.add(run.step, run.step / per_epoch, window, cfg.batch_size, t0)
                        shown = ("loss_d", "loss_g", "d_real", "d_fake")
                        bar.set_postfix({k: f"{row[k]:.3f}" for k in shown})
                    window, t0 = [], time.perf_counter()
                bar.update(1)
                if end_of_epoch:
                    if writes:
                        run.settle_ema()
                        save_grid(run.samples(sample_seeds), out / "samples" / f"epoch_{epoch + 1:04d}.png")
                        save_checkpoint(run.state(), ckpt_path)
                    saved_step = run.step
        if writes:
            run.settle_ema()
            save_checkpoint(run.state(), ckpt_path)
        saved_step = run.step
        if writes:
            save_grid(run.samples(sample_seeds), out / "samples" / "final.png")
            plot_losses(out / "metrics.csv", out / "loss.png")
    except KeyboardInterrupt:
        raise Interrupted(interrupted(run, ckpt_path, saved_step, stops.torn, writes)) from None
    finally:
        bar.close()
    return out


def interrupted(run: Run, ckpt_path: Path, saved_step: int | None, torn: bool, writes: bool = True) -> str:
    """Save what a stopped run holds, if it is whole and new; the message that says what was kept.

    A process that does not write (rank > 0) saves nothing: rank 0 stops after the same step.
    """
    if not writes:
        return f"interrupted at step {run.step}; process 0 saves the checkpoint"
    if torn:
        if saved_step is None:
            return "stopped at once, before the first checkpoint: nothing to resume"
        return f"stopped at once: the checkpoint at step {saved_step} is kept; resume with --resume"
    if run.step == 0 and saved_step is None:
        return "interrupted before the first step: nothing to resume"
    if run.step != saved_step:
        # A second signal during this save leaves the previous checkpoint: writes are atomic.
        run.settle_ema()
        save_checkpoint(run.state(), ckpt_path)
    return f"interrupted at step {run.step}; resume with --resume"


class MetricsLog:
    """Appends averaged training statistics to a CSV file (kept across resumes)."""

    def __init__(self, path: Path, step: int = 0):
        """Open the log of a run at ``step``: rows of later steps are dropped.

        A run killed after its last checkpoint logged steps it will redo when resumed, and its
        last row may be cut short; a new run (step 0) starts an empty log.
        """
        self.path = path
        kept: list[list[str]] = []
        if path.exists():
            text = path.read_text()
            rows = list(csv.reader(io.StringIO(text, newline="")))
            kept = [r for r in rows[1:] if len(r) == len(METRIC_FIELDS) and all(r) and _step(r) <= step]
            if rows[:1] == [METRIC_FIELDS] and len(kept) == len(rows) - 1 and text.endswith("\n"):
                return  # nothing to drop: keep the file as it is
        text = io.StringIO()
        csv.writer(text).writerows([METRIC_FIELDS, *kept])
        atomic_write(path, text.getvalue().encode())

    def add(self, step: int, epoch: float, window: list[dict], batch: int, t0: float) -> dict:
        row = {k: float(torch.stack([w[k] for w in window]).mean()) for k in window[0]}
        row.update(step=step, epoch=round(epoch, 4))
        row["images_per_s"] = len(window) * batch / max(time.perf_counter() - t0, 1e-9)
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([row[k] for k in METRIC_FIELDS])
        return row


def _step(row: list[str]) -> float:
    """The step of a metrics.csv row; infinite for a row that is not whole."""
    try:
        return int(row[0])
    except ValueError:
        return float("inf")


def plot_losses(metrics_csv: Path, out_png: Path) -> None:
    """Plot the losses and mean discriminator outputs over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with metrics_csv.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for key in ("loss_d", "loss_g"):
        ax1.plot(steps, [float(r[key]) for r in rows], label=key)
    for key in ("d_real", "d_fake"):
        ax2.plot(steps, [float(r[key]) for r in rows], label=key)
    ax1.set_ylabel("loss")
    ax2.set_ylabel("mean D output")
    ax2.set_xlabel("step")
    ax2.set_ylim(0, 1)
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)



def dry_run(cfg: TrainConfig) -> str:
    """One training step on random data: a smoke test of the networks and losses."""
    c = 3 if cfg.channels == 3 else 1
    rng = np.random.default_rng(cfg.seed)
    data = ImageSet("random", rng.integers(0, 256, (cfg.batch_size, c, cfg.image_size, cfg.image_size),
                                           dtype=np.uint8), np.zeros(cfg.batch_size, np.int64), ["0"])
    spec = spec_for(cfg, data)
    run = Run(cfg, spec, pick_device(cfg.device))
    stats = run.train_step(torch.from_numpy(data.images).float().div(255).to(run.device),
                           torch.zeros(cfg.batch_size, dtype=torch.long, device=run.device)
                           if spec.num_classes else None)
    return "dry run ok: " + ", ".join(f"{k}={float(v):.4f}" for k, v in stats.items())
