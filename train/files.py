"""Durable, atomic file writes: what a crash, a kill or a full disk can never leave half-done."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".tmp"  # atomic_write's temporary files: ".<name>.<random>.tmp" beside the target


def fsync_directory(path: Path) -> None:
    """Make a rename or a new entry in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file another library wrote (and closed) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | memoryview) -> None:
    """Write data to path so that a reader, or a reboot, sees the old file or the new one, never half.

    The bytes go to a hidden temporary file in the same directory, are fsynced, and the file
    is renamed over path; the directory is fsynced so that the rename survives a power cut.
    Any error (a full disk included) removes the temporary file and leaves path as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def remove_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files atomic_write left in directory when its process died.

    Only for a directory no live process is writing to (a run directory under its lock).
    """
    removed = []
    for path in Path(directory).glob(f".*{TEMP_SUFFIX}"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
