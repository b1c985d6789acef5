"""Dataset loaders on tiny synthetic IDX, folder and array files, including corrupt ones."""

import gzip
import hashlib
import struct

import numpy as np
import pytest
from PIL import Image

from train.data import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    download_mnist_like,
    load_arrays,
    load_dataset,
    load_folder,
    load_mnist_like,
    read_idx,
)
from train.errors import TrainError


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist_dir(directory, n=12, split="train", gz=True):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    prefix = {"train": "train", "test": "t10k"}[split]
    for stem, magic, arr in (
        (f"{prefix}-images-idx3-ubyte", IDX_IMAGES_MAGIC, images),
        (f"{prefix}-labels-idx1-ubyte", IDX_LABELS_MAGIC, labels),
    ):
        raw = idx_bytes(magic, arr)
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / stem).write_bytes(raw)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_dir_round_trip(tmp_path, gz):
    images, labels = write_mnist_dir(tmp_path, gz=gz)
    data = load_mnist_like("mnist", tmp_path)
    assert data.images.shape == (12, 1, 28, 28)
    np.testing.assert_array_equal(data.images[:, 0], images)
    np.testing.assert_array_equal(data.labels, labels)
    assert data.classes == [str(i) for i in range(10)]


def test_fashion_classes_and_test_split(tmp_path):
    write_mnist_dir(tmp_path, n=5, split="test")
    data = load_dataset("fashion-mnist", tmp_path, split="test")
    assert len(data) == 5 and data.classes[7] == "Sneaker"


def test_missing_file(tmp_path):
    with pytest.raises(TrainError, match="not found"):
        load_mnist_like("mnist", tmp_path)


def test_truncated_gzip(tmp_path):
    write_mnist_dir(tmp_path)
    f = tmp_path / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(TrainError, match="truncated or corrupt"):
        load_mnist_like("mnist", tmp_path)


def test_truncated_payload(tmp_path):
    raw = idx_bytes(IDX_IMAGES_MAGIC, np.zeros((3, 28, 28), np.uint8))[:-10]
    (tmp_path / "x.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(TrainError, match="does not match dimensions"):
        read_idx(tmp_path / "x.gz", IDX_IMAGES_MAGIC)


def test_wrong_magic(tmp_path):
    (tmp_path / "x").write_bytes(idx_bytes(IDX_LABELS_MAGIC, np.zeros(3, np.uint8)))
    with pytest.raises(TrainError, match="wrong IDX magic 2049"):
        read_idx(tmp_path / "x", IDX_IMAGES_MAGIC)


def test_bad_dimensions(tmp_path):
    (tmp_path / "x").write_bytes(idx_bytes(IDX_IMAGES_MAGIC, np.zeros((3, 0, 28), np.uint8)))
    with pytest.raises(TrainError, match="bad image dimensions"):
        read_idx(tmp_path / "x", IDX_IMAGES_MAGIC)


def test_count_mismatch(tmp_path):
    write_mnist_dir(tmp_path)
    raw = idx_bytes(IDX_LABELS_MAGIC, np.zeros(5, np.uint8))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(TrainError, match="12 images but 5 labels"):
        load_mnist_like("mnist", tmp_path)


def test_download_from_local_mirror_checks_md5(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    write_mnist_dir(mirror)
    files = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in mirror.glob("*.gz")}
    monkeypatch.setitem(
        __import__("train.data", fromlist=["MNIST_LIKE"]).MNIST_LIKE,
        "tiny", {"mirrors": [], "files": files, "classes": None},
    )
    target = tmp_path / "dl"
    download_mnist_like("tiny", target, mirrors=[mirror.as_uri() + "/"])
    assert sorted(p.name for p in target.iterdir()) == sorted(files)
    # A corrupted mirror is refused, and nothing half-written is left behind.
    (mirror / "train-images-idx3-ubyte.gz").write_bytes(b"garbage")
    target2 = tmp_path / "dl2"
    with pytest.raises(TrainError, match="md5 mismatch"):
        download_mnist_like("tiny", target2, mirrors=[mirror.as_uri() + "/"])
    assert not (target2 / "train-images-idx3-ubyte.gz").exists()


def test_folder_grayscale_and_classes(tmp_path):
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / cls / f"{i}.png")
    data = load_folder(tmp_path, size=16, channels=1)
    assert data.images.shape == (4, 1, 16, 16)
    assert data.classes == ["cats", "dogs"]
    assert data.labels.tolist() == [0, 0, 1, 1]


def test_folder_rgb_jpeg_flat(tmp_path):
    Image.new("RGB", (20, 20), (0, 255, 0)).save(tmp_path / "a.jpg")
    data = load_folder(tmp_path, size=8, channels=3)
    assert data.images.shape == (1, 3, 8, 8) and data.labels is None
    assert data.images[0, 1].mean() > 200 and data.images[0, 0].mean() < 50


def test_folder_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(TrainError, match="no images"):
        load_folder(tmp_path, 28)


def test_folder_with_corrupt_image(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(TrainError, match="cannot read image"):
        load_folder(tmp_path, 28)


@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw"])
def test_npy_layouts(tmp_path, layout):
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    arr = {"nhw": x, "nhwc": x[..., None], "nchw": x[:, None]}[layout]
    np.save(tmp_path / "x.npy", arr)
    data = load_arrays(tmp_path / "x.npy")
    np.testing.assert_array_equal(data.images[:, 0], x)


def test_npz_float_with_labels(tmp_path):
    x = np.full((3, 8, 8), 0.5, dtype=np.float32)
    np.savez(tmp_path / "d.npz", images=x, labels=np.array([0, 2, 1]))
    data = load_arrays(tmp_path / "d.npz")
    assert data.images.dtype == np.uint8 and data.images.max() == 128
    assert data.classes == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("arr", "message"),
    [
        (np.zeros((2, 5), np.uint8), "expected images"),
        (np.full((2, 4, 4), 2.0, np.float32), "in \\[0, 1\\]"),
        (np.full((2, 4, 4), np.nan, np.float32), "finite"),
        (np.zeros((2, 4, 4), np.int32), "uint8"),
    ],
)
def test_bad_arrays(tmp_path, arr, message):
    np.save(tmp_path / "x.npy", arr)
    with pytest.raises(TrainError, match=message):
        load_arrays(tmp_path / "x.npy")


def test_npz_without_images_key(tmp_path):
    np.savez(tmp_path / "d.npz", foo=np.zeros((2, 4, 4)))
    with pytest.raises(TrainError, match="no 'x' or 'images'"):
        load_arrays(tmp_path / "d.npz")


def test_truncated_npy(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 28, 28), np.uint8))
    raw = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(raw[:200])
    with pytest.raises(TrainError, match="cannot read"):
        load_arrays(tmp_path / "x.npy")
