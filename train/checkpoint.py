"""Checkpoints: written atomically (temp file, fsync, rename, fsync of the directory), read
with clear errors."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from train.errors import TrainError
from train.files import atomic_write

FORMAT = "gan-checkpoint/1"


def save_checkpoint(state: dict, path: Path) -> None:
    """Write state to path atomically: a reader sees the old checkpoint or the new one, never half.

    A write that fails (a full disk) is a TrainError and keeps the previous checkpoint.
    """
    path = Path(path)
    buffer = io.BytesIO()  # serialised first, so a failing disk is one OSError, not torch's
    torch.save({"format": FORMAT, **state}, buffer)
    try:
        atomic_write(path, buffer.getbuffer())
    except OSError as e:
        kept = "; the previous checkpoint is kept" if path.exists() else ""
        raise TrainError(f"cannot save the checkpoint {path}: {e.strerror or e}{kept}") from None


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by save_checkpoint (tensors and plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a torn or foreign file
        raise TrainError(f"{path} is not a readable checkpoint: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainError(f"{path} is not a checkpoint of this project (no '{FORMAT}' marker)")
    return state
