"""Checkpoints: written atomically (temp file, fsync, rename, fsync of the directory), read
with clear errors, and upgraded on reading to the current shape.

A checkpoint is a dict marked ``"format": "gan-checkpoint/N"``, N its format version. Reading
one of an older version passes it through `upgrade`, one step per version, so the rest of
the code sees only the current shape; `upgrade` is the one place that knows what older
checkpoints lacked. docs/model-format.md (Checkpoints) lists the versions.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import torch

from train.config import TrainConfig
from train.errors import TrainError
from train.files import atomic_write
from train.models import NetworkSpec

NAME = "gan-checkpoint"
VERSION = 2  # the format version save_checkpoint writes
FORMAT = f"{NAME}/{VERSION}"

# The keys of a current checkpoint besides "format"; "config" and "spec" hold every field of
# TrainConfig and NetworkSpec.
KEYS = (
    "config", "spec", "step", "generator", "discriminator", "ema", "opt_g", "opt_d", "noise_rng",
    "dataset", "classes", "command", "resumed",
)

# What version 1 checkpoints that lack a key were trained with (the values their loading gave
# them before versions were explicit), in the order the options were added.
V1_CONFIG = {
    "d_depth": 2,  # two strided convolutions in the discriminator
    "d_projection": "flat",  # the class term on the flattened maps
    "d_batch_std": False,  # no batch spread
    "mode_seeking": 0.0,  # no mode-seeking term
    "class_loss": 0.0,  # no class loss
    "class_margin": 0.0,  # (its cross-entropy form)
}
V1_SPEC = {"d_depth": 2, "d_projection": "flat", "d_batch_std": False, "d_classes": False}


def _v1_to_v2(state: dict) -> dict:
    """Version 1 -> 2: the keys that version 1 checkpoints written before an option existed lack.

    Version 1 covers every checkpoint written before versions were explicit; options were added
    to it without a new version, so one may lack any of the later config and spec keys, and
    those written before resumes were recorded lack "resumed". Keys present are kept as saved.
    """
    state = {"resumed": [], **state}
    for key, lacked in (("config", V1_CONFIG), ("spec", V1_SPEC)):
        if isinstance(state.get(key), dict):  # else check_shape names what is wrong
            state[key] = {**lacked, **state[key]}
    return state


# From version N to N + 1, for every N below VERSION.
_UPGRADES: dict[int, Callable[[dict], dict]] = {1: _v1_to_v2}


def format_version(state: dict) -> int | None:
    """The format version a checkpoint dict is marked with; None if it is not marked as ours."""
    marker = state.get("format")
    name, _, number = marker.partition("/") if isinstance(marker, str) else ("", "", "")
    if name != NAME or not number.isdigit():
        return None
    return int(number)


def upgrade(state: dict) -> dict:
    """A checkpoint dict of any known format version, in the current shape (a new dict).

    Raises TrainError for a version newer than this code reads, or one it never wrote.
    """
    version = format_version(state)
    if version is None:
        raise TrainError(f"not a checkpoint of this project (no '{NAME}/N' marker)")
    if version > VERSION:
        raise TrainError(
            f"checkpoint format {version} is newer than this code reads (up to {VERSION}): "
            "use the version of the code that wrote it, or a newer one"
        )
    if version not in _UPGRADES and version != VERSION:
        raise TrainError(f"checkpoint format {version} was never written by this project")
    while version < VERSION:
        state = _UPGRADES[version](state)
        version += 1
    return {**state, "format": FORMAT}


def check_shape(state: dict) -> None:
    """Raise TrainError naming the first key a current-shape checkpoint lacks or should not hold."""
    missing = [key for key in KEYS if key not in state]
    if missing:
        raise TrainError(f"the checkpoint lacks {', '.join(map(repr, missing))}")
    for key, kind in (("config", TrainConfig), ("spec", NetworkSpec)):
        if not isinstance(state[key], dict):
            raise TrainError(f"the checkpoint's {key!r} is not a dict")
        try:
            kind.from_dict(state[key])
        except ValueError as e:
            raise TrainError(f"the checkpoint's {key!r}: {e}") from None


def save_checkpoint(state: dict, path: Path) -> None:
    """Write state to path atomically: a reader sees the old checkpoint or the new one, never half.

    A write that fails (a full disk) is a TrainError and keeps the previous checkpoint.
    """
    path = Path(path)
    buffer = io.BytesIO()  # serialised first, so a failing disk is one OSError, not torch's
    torch.save({**state, "format": FORMAT}, buffer)  # always the shape this code writes
    try:
        atomic_write(path, buffer.getbuffer())
    except OSError as e:
        kept = "; the previous checkpoint is kept" if path.exists() else ""
        raise TrainError(f"cannot save the checkpoint {path}: {e.strerror or e}{kept}") from None


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by save_checkpoint (tensors and plain data only), in the
    current shape whatever format version it was written in."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a torn or foreign file
        raise TrainError(f"{path} is not a readable checkpoint: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict) or format_version(state) is None:
        raise TrainError(f"{path} is not a checkpoint of this project (no '{NAME}/N' marker)")
    try:
        state = upgrade(state)
        check_shape(state)
    except TrainError as e:
        raise TrainError(f"{path}: {e}") from None
    return state
