"""Checkpoints: written atomically (temp file, fsync, rename), read with clear errors."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from train.errors import TrainError

FORMAT = "gan-checkpoint/1"


def save_checkpoint(state: dict, path: Path) -> None:
    """Write state to path so that a reader sees the old file or the new one, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
