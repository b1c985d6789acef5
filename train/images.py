"""Saving generated images as PNG grids, with the service's own grid layout and rounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serve.imaging import grid, png_bytes, to_uint8
from train.files import atomic_write


def save_grid(images: np.ndarray, path: Path) -> Path:
    """Write [n, C, H, W] images in [0, 1] as one PNG grid at path (parents created), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, png_bytes(grid(to_uint8(images))))
    return path
