"""Model output to bytes: uint8 tiles, deterministic PNGs, the grid layout, ``.npy``."""

from __future__ import annotations

import io
import math
import struct
import zlib

import numpy as np
from PIL import Image

GRID_PADDING = 2  # pixels between tiles and around the border, filled with 0 (black)
PNG_COMPRESS_LEVEL = 6
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MODES = {1: ("L", 0), 3: ("RGB", 2)}  # channels -> Pillow mode, PNG colour type
_IDAT_MIN = 65536  # Pillow's IDAT chunks hold max(65536, 4 * width) bytes of encoded data


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images [n, C, H, W] in [0, 1] to uint8 tiles [n, H, W, C] (round half to even)."""
    # Extreme client noise can overflow inside the network, and NaN must not reach a cast:
    # fmax(NaN, 0) is 0 (fmax ignores NaN), then fmin clips to 1; infinities clip like numbers.
    scaled = np.fmin(np.fmax(images, 0.0), 1.0)
    scaled *= 255.0
    np.rint(scaled, out=scaled)
    return scaled.astype(np.uint8).transpose(0, 2, 3, 1)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def png_bytes(tile: np.ndarray) -> bytes:
    """One uint8 tile [H, W, C] (C = 1 or 3) as PNG bytes, with no metadata chunks.

    The bytes are those of ``Image.save(format="PNG", compress_level=6)``: the image data
    comes from Pillow's own PNG encoder (its row filters and zlib settings), and only the
    chunks around it are written here, which saves a third of the time of a small tile.
    """
    height, width, channels = tile.shape
    mode, colour_type = _PNG_MODES[channels]
    image = Image.frombytes(mode, (width, height), np.ascontiguousarray(tile).tobytes())
    # Pillow's "zip" encoder with its PNG encoder settings: optimize off, the level, the
    # default strategy (filtered), no dictionary.
    data = image.tobytes("zip", mode, False, PNG_COMPRESS_LEVEL, -1, b"")
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    chunks = [_PNG_SIGNATURE, _png_chunk(b"IHDR", header)]
    size = max(_IDAT_MIN, 4 * width)
    chunks += [_png_chunk(b"IDAT", data[i : i + size]) for i in range(0, len(data), size)]
    chunks.append(_png_chunk(b"IEND", b""))
    return b"".join(chunks)


def grid_shape(n: int) -> tuple[int, int]:
    """Rows and columns of the grid of ``n`` tiles: ``ncol = ceil(sqrt(n))``, filled row-major."""
    ncol = math.ceil(math.sqrt(n))
    return math.ceil(n / ncol), ncol


def grid(tiles: np.ndarray, padding: int = GRID_PADDING, ncol: int | None = None) -> np.ndarray:
    """Tiles [n, H, W, C] laid out row-major in one image, ``padding`` px around every tile.

    ``ncol`` columns (``n`` of them: a strip in one row), by default those of :func:`grid_shape`.
    """
    n, height, width, channels = tiles.shape
    nrow, ncol = grid_shape(n) if ncol is None else (math.ceil(n / ncol), ncol)
    out = np.zeros(
        (nrow * (height + padding) + padding, ncol * (width + padding) + padding, channels),
        dtype=np.uint8,
    )
    for i, tile in enumerate(tiles):
        top = padding + (i // ncol) * (height + padding)
        left = padding + (i % ncol) * (width + padding)
        out[top : top + height, left : left + width] = tile
    return out


def npy_bytes(array: np.ndarray) -> bytes:
    """An array as ``.npy`` file bytes (``numpy.load(io.BytesIO(data))`` reads it back)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
