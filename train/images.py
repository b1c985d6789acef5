"""Saving generated images: float [0, 1] arrays to uint8 and to PNG grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[n, C, H, W] floats in [0, 1] -> [n, H, W, C] uint8, rounding to nearest."""
    return np.clip(np.rint(np.asarray(images) * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def grid_image(images: np.ndarray, ncol: int | None = None, pad: int = 2) -> Image.Image:
    """Tile [n, C, H, W] images in [0, 1] into one image, ceil(sqrt(n)) columns by default."""
    tiles = to_uint8(images)
    n, h, w, c = tiles.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    canvas = np.zeros((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, col = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        canvas[y : y + h, x : x + w] = tile
    return Image.fromarray(canvas[..., 0] if c == 1 else canvas)


def save_grid(images: np.ndarray, path: Path, ncol: int | None = None) -> Path:
    """Write a PNG grid of the images to path (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(images, ncol).save(path, format="PNG")
    return path
