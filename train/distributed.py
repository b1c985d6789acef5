"""Data-parallel training across processes started by torchrun (torch.distributed).

`torchrun --nproc-per-node N -m train fit ...` starts N processes, each with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT in its environment; a plain `python -m train fit`
has none of them and trains exactly as it always did (no process group). Each process is a
:class:`Shard` of the run: the global batch (``--batch-size``) is split into N equal parts,
process r taking rows r, r + N, r + 2N, ... of it, and of the noise and labels drawn for it;
see docs/training-distributed.md for why this split and what stays equal to one process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from train.errors import TrainError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class PeerFailed(TrainError):
    """Another process of the run stopped (killed, or failed): this one cannot go on alone."""


@dataclass(frozen=True)
class Shard:
    """This process's place in the run: its rank among `world` processes, and the device
    (``cpu`` or ``cuda:LOCAL_RANK``) its collectives run on."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def distributed(self) -> bool:
        """More than one process: gradients, statistics and decisions are shared."""
        return self.world > 1

    @property
    def writes(self) -> bool:
        """Only rank 0 writes into the run directory (checkpoints, samples, metrics, plots)."""
        return self.rank == 0

    def local_batch(self, batch_size: int) -> int:
        """This process's share of a global batch; the batch must split evenly."""
        if batch_size % self.world:
            raise TrainError(
                f"--batch-size {batch_size} is the global batch and must split evenly across "
                f"{self.world} processes (choose a multiple of {self.world})"
            )
        return batch_size // self.world

    def rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """This process's rows of a global batch: r, r + world, r + 2 world, ...

        One process gets the tensor itself, so a single-process run computes what it always did.
        """
        return tensor if self.world == 1 else tensor[self.rank :: self.world]

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over processes of a tensor (no gradient), the same on every rank."""
        if self.world == 1:
            return value
        total = value.detach().to(self.device, copy=True)
        try:
            dist.all_reduce(total)
        except RuntimeError as e:
            if not is_peer_failure(e):
                raise
            raise PeerFailed(peer_failed_message(e)) from None
        return total.to(value.device)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over processes of a tensor (no gradient)."""
        return value if self.world == 1 else self.sum(value) / self.world

    def any(self, flag: bool) -> bool:
        """Whether any process passed True: a decision every rank then takes together."""
        if self.world == 1:
            return flag
        return bool(self.sum(torch.tensor([float(flag)], device=self.device)).item() > 0)

    def average_stats(self, window: list[dict]) -> list[dict]:
        """Per-step statistics (scalar tensors) averaged over processes: one all-reduce for the
        whole window, so the logged figures are the global batch's means."""
        if self.world == 1 or not window:
            return window
        keys = list(window[0])
        table = torch.stack([torch.stack([w[k].float() for k in keys]) for w in window])
        table = self.mean(table)
        return [dict(zip(keys, row, strict=True)) for row in table]


SINGLE = Shard()


def is_peer_failure(error: BaseException) -> bool:
    """Whether a collective's error says a peer process is gone (gloo raises a plain
    RuntimeError for a closed or reset connection, other backends a DistError)."""
    text = str(error)
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError)
        and any(sign in text for sign in ("Connection closed by peer", "Connection reset by peer", "gloo"))
    )


def peer_failed_message(error: BaseException) -> str:
    """One line for a collective that failed because another process is gone."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if first.startswith("[") and "] " in first:  # gloo's "[source file:line] what happened"
        first = first.split("] ", 1)[1]
    first = first.split(". This is typically")[0]
    return f"another training process stopped, so this one stops too ({first[:160]})"


def launched_by_torchrun(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment is that of a process torchrun started."""
    env = os.environ if env is None else env
    return all(name in env for name in TORCHRUN_VARIABLES)


def start(device: str, env: Mapping[str, str] | None = None) -> Shard:
    """Join the run's process group when torchrun started this process; else the single shard.

    torchrun with one process is a single process too: no group, the plain path. The backend
    follows the device: NCCL on CUDA (each process on the GPU of its LOCAL_RANK), gloo on CPU.
    """
    env = os.environ if env is None else env
    if not launched_by_torchrun(env) or int(env["WORLD_SIZE"]) == 1:
        return SINGLE
    rank, world, local_rank = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise TrainError("--device cuda asked for, but no CUDA device is available")
        if local_rank >= torch.cuda.device_count():
            raise TrainError(f"process {local_rank} of this machine has no GPU of its own "
                             f"({torch.cuda.device_count()} visible)")
        torch.cuda.set_device(local_rank)
    place = f"cuda:{local_rank}" if cuda else "cpu"
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    return Shard(rank=rank, world=world, local_rank=local_rank, device=place)


def stop(shard: Shard) -> None:
    """Leave the process group (after a run that ended normally)."""
    if shard.distributed and dist.is_initialized():
        dist.destroy_process_group()
