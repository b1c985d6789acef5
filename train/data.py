"""Datasets: MNIST-style IDX files, folders of images, and .npy/.npz arrays.

Every loader returns a :class:`ImageSet` of uint8 images ``[N, C, H, W]``; the training
loop converts batches to float in [0, 1] on the device, which keeps the whole set small
(47 MB for MNIST) and avoids a DataLoader's per-sample overhead.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from train.errors import TrainError
from train.files import atomic_write

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}

# The official releases: file name -> md5 of the .gz file.
MNIST_LIKE = {
    "mnist": {
        "mirrors": [
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ],
        "files": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        "classes": [str(i) for i in range(10)],
    },
    "fashion-mnist": {
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "files": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        "classes": [
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ],
    },
}
SPLIT_PREFIX = {"train": "train", "test": "t10k"}


@dataclass
class ImageSet:
    """Images as uint8 ``[N, C, H, W]``, optional int64 labels ``[N]`` and class names."""

    name: str
    images: np.ndarray
    labels: np.ndarray | None = None
    classes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one IDX file (gzip or raw), checking its magic number, dimensions and size."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"dataset file not found: {path}")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise TrainError(f"cannot read {path}: truncated or corrupt gzip ({e})") from None
    if len(raw) < 4:
        raise TrainError(f"{path}: too short to be an IDX file ({len(raw)} bytes)")
    found = struct.unpack(">I", raw[:4])[0]
    if found != magic:
        raise TrainError(f"{path}: wrong IDX magic {found} (expected {magic})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise TrainError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if magic == IDX_IMAGES_MAGIC and (dims[1] == 0 or dims[2] == 0):
        raise TrainError(f"{path}: bad image dimensions {dims}")
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise TrainError(
            f"{path}: size {len(raw)} bytes does not match dimensions {list(dims)} "
            f"({expected} bytes expected): truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _idx_file(directory: Path, stem: str) -> Path:
    """The .gz file if present, else the uncompressed one (both names are in use)."""
    for candidate in (f"{stem}.gz", stem, stem.replace("-idx", ".idx")):
        if (directory / candidate).is_file():
            return directory / candidate
    raise TrainError(f"dataset file not found: {directory / (stem + '.gz')}")


def load_mnist_like(name: str, directory: Path, split: str = "train") -> ImageSet:
    """MNIST or Fashion-MNIST from a directory of the official IDX files."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TrainError(f"dataset directory not found: {directory}")
    prefix = SPLIT_PREFIX[split]
    images = read_idx(_idx_file(directory, f"{prefix}-images-idx3-ubyte"), IDX_IMAGES_MAGIC)
    labels = read_idx(_idx_file(directory, f"{prefix}-labels-idx1-ubyte"), IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise TrainError(f"{directory}: {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise TrainError(f"{directory}: the {split} split has no images")
    classes = MNIST_LIKE.get(name, {}).get("classes") or [str(i) for i in range(10)]
    if labels.max() >= len(classes):
        raise TrainError(f"{directory}: label {labels.max()} outside 0..{len(classes) - 1}")
    return ImageSet(name, images[:, None], labels.astype(np.int64), list(classes))


def download_mnist_like(name: str, directory: Path, mirrors: list[str] | None = None) -> None:
    """Download the official files with md5 checks (opt-in; needs internet or a local mirror)."""
    spec = MNIST_LIKE[name]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for filename, md5 in spec["files"].items():
        target = directory / filename
        if target.is_file() and hashlib.md5(target.read_bytes()).hexdigest() == md5:
            continue
        errors = []
        for mirror in mirrors or spec["mirrors"]:
            try:
                with urllib.request.urlopen(mirror + filename, timeout=60) as response:
                    payload = response.read()
            except OSError as e:
                errors.append(f"{mirror}: {e}")
                continue
            if hashlib.md5(payload).hexdigest() != md5:
                errors.append(f"{mirror}: md5 mismatch")
                continue
            atomic_write(target, payload)
            break
        else:
            raise TrainError(f"could not download {filename}: " + "; ".join(errors))


def load_folder(directory: Path, size: int, channels: int = 1) -> ImageSet:
    """Images from a folder (recursively); sub-folder names become class labels."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TrainError(f"image folder not found: {directory}")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise TrainError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {directory}")
    mode = {1: "L", 3: "RGB"}[channels]
    images = np.empty((len(files), channels, size, size), dtype=np.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as im:
                im = im.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as e:
            raise TrainError(f"cannot read image {path}: {e}") from None
        images[i] = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    groups = sorted({p.parent.relative_to(directory).as_posix() for p in files})
    if len(groups) > 1 or groups != ["."]:
        index = {g: i for i, g in enumerate(groups)}
        labels = np.array([index[p.parent.relative_to(directory).as_posix()] for p in files])
        return ImageSet(directory.name, images, labels.astype(np.int64), groups)
    return ImageSet(directory.name, images)


def load_arrays(path: Path) -> ImageSet:
    """Images from .npy ([N,H,W], [N,H,W,C] or [N,C,H,W]) or .npz (keys x/images, y/labels)."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"array file not found: {path}")
    labels = None
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                key = next((k for k in ("x", "images", "x_train") if k in loaded.files), None)
                if key is None:
                    raise TrainError(f"{path}: no 'x' or 'images' array (has {loaded.files})")
                array = loaded[key]
                lkey = next((k for k in ("y", "labels", "y_train") if k in loaded.files), None)
                labels = loaded[lkey] if lkey else None
        else:
            array = loaded
    except (OSError, ValueError, EOFError) as e:
        raise TrainError(f"cannot read {path}: {e}") from None
    images = _to_nchw_uint8(array, path)
    if labels is not None:
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise TrainError(f"{path}: labels must be integers of shape [{len(images)}]")
        if labels.min() < 0:
            raise TrainError(f"{path}: labels must be >= 0")
        labels = labels.astype(np.int64)
        classes = [str(i) for i in range(int(labels.max()) + 1)]
        return ImageSet(path.stem, images, labels, classes)
    return ImageSet(path.stem, images)


def _to_nchw_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        array = array.transpose(0, 3, 1, 2)
    if array.ndim != 4 or array.shape[1] not in (1, 3) or len(array) == 0:
        raise TrainError(
            f"{path}: expected images [N, H, W], [N, H, W, C] or [N, C, H, W] with C in 1 or 3 "
            f"and N > 0, got shape {list(array.shape)}"
        )
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise TrainError(f"{path}: float images must be finite and in [0, 1]")
        return np.round(array * 255).astype(np.uint8)
    raise TrainError(f"{path}: images must be uint8 (0-255) or float (0-1), got {array.dtype}")


def load_dataset(
    kind: str, path: Path | None, split: str = "train", size: int = 28, channels: int = 1,
    download: bool = False,
) -> ImageSet:
    """Load a dataset by kind: mnist, fashion-mnist, folder or arrays."""
    if kind in MNIST_LIKE:
        if path is None:
            raise TrainError(f"--data DIR is required for {kind} (a directory of IDX files)")
        if download:
            download_mnist_like(kind, Path(path))
        return load_mnist_like(kind, Path(path), split)
    if path is None:
        raise TrainError(f"--data PATH is required for {kind}")
    if kind == "folder":
        return load_folder(Path(path), size, channels)
    if kind == "arrays":
        return load_arrays(Path(path))
    raise TrainError(f"unknown dataset kind {kind!r}")
