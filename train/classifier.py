"""The evaluation classifier: a small CNN whose penultimate layer is the feature space of FID.

`python -m train classifier` trains one on a dataset's train split and writes its weights
(a state_dict, loadable with ``weights_only=True``) and a JSON of how it was made, with its
test accuracy. Training is deterministic for a given seed, torch build and thread count.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from serve.repository import sha256_of
from train.data import MNIST_LIKE, ImageSet, load_dataset, load_mnist_like
from train.errors import TrainError
from train.files import atomic_write

WEIGHTS_DIR = Path(__file__).resolve().parent / "classifier_weights"
WIDTHS = (32, 64, 128)  # conv1, conv2 channels; feature size


class Classifier(nn.Module):
    """images [n, C, H, W] in [0, 1] (H, W >= 16) -> features [n, F] and logits [n, K]."""

    def __init__(self, channels: int = 1, num_classes: int = 10, widths: tuple[int, int, int] = WIDTHS):
        super().__init__()
        c1, c2, f = widths
        self.conv = nn.Sequential(
            nn.Conv2d(channels, c1, 5, bias=False), nn.BatchNorm2d(c1), nn.ReLU(True), nn.MaxPool2d(2),
            # c1 x 12 x 12 (for 28 x 28 input)
            nn.Conv2d(c1, c2, 5, bias=False), nn.BatchNorm2d(c2), nn.ReLU(True),
            # c2 x 8 x 8; adaptive pooling makes the layer below independent of the image size
            nn.AdaptiveMaxPool2d(4),
            # c2 x 4 x 4
            nn.Flatten(), nn.Dropout(0.1),
        )
        self.fc = nn.Sequential(nn.Linear(c2 * 16, f), nn.ReLU(True))
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(f, num_classes))

    @property
    def channels(self) -> int:
        return self.conv[0].in_channels

    @property
    def num_classes(self) -> int:
        return self.head[1].out_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer: the feature space FID and precision/recall are measured in."""
        # Centre the inputs here, so every caller passes plain [0, 1] images.
        return self.fc(self.conv((x - 0.5) / 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def load_classifier(path: Path) -> Classifier:
    """A classifier from a state_dict file (its sizes read from the weights), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"classifier weights not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        channels = state["conv.0.weight"].shape[1]
        widths = (state["conv.0.weight"].shape[0], state["conv.4.weight"].shape[0],
                  state["fc.0.weight"].shape[0])
        model = Classifier(channels, state["head.1.weight"].shape[0], widths)
        model.load_state_dict(state)
    except Exception as e:  # torch raises many types for a foreign or torn file
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TrainError(f"{path} is not a classifier of this project: {first}") from None
    return model.eval()


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 [n, C, H, W] -> float32 in [0, 1]."""
    return torch.from_numpy(images).float().div_(255.0)


@torch.no_grad()
def accuracy(model: Classifier, data: ImageSet, batch_size: int = 1000) -> float:
    """Top-1 accuracy on a labelled image set."""
    model.eval()
    correct = 0
    for i in range(0, len(data), batch_size):
        logits = model(to_float(data.images[i : i + batch_size]))
        correct += int((logits.argmax(1).numpy() == data.labels[i : i + batch_size]).sum())
    return correct / len(data)


def train_classifier(
    train: ImageSet, epochs: int = 5, seed: int = 0, batch_size: int = 128, lr: float = 1e-3,
    progress: bool = True,
) -> Classifier:
    """Train a classifier on a labelled image set (Adam, cross-entropy); returns it in eval mode."""
    if train.labels is None or not train.classes:
        raise TrainError(f"dataset {train.name!r} has no labels: a classifier needs them")
    if min(train.shape[1:]) < 16:
        raise TrainError(f"the classifier needs images of at least 16 x 16, got {train.shape[1:]}")
    torch.manual_seed(seed)
    model = Classifier(train.shape[0], len(train.classes))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = (len(train) + batch_size - 1) // batch_size
    # One cycle: a short warm-up, then cosine decay to almost zero, so that the last steps
    # settle the weights, which matters when there are only a few epochs.
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps, pct_start=0.15)
    order_rng = torch.Generator().manual_seed(seed)
    labels = torch.from_numpy(train.labels)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=order_rng)
        t0, total = time.perf_counter(), 0.0
        for i in range(steps):
            idx = order[i * batch_size : (i + 1) * batch_size]
            x = to_float(train.images[idx.numpy()])
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        if progress:
            print(f"epoch {epoch + 1}/{epochs}: loss {total / steps:.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return model.eval()


def save_classifier(model: Classifier, path: Path, about: dict) -> dict:
    """Write the state_dict to path and `about` (plus size and sha256) to path.json, each
    atomically (never half a file, whatever stops the process); returns that."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write(path, buffer.getbuffer())
    info = {**about, "file": path.name, "sha256": sha256_of(path),
            "parameters": sum(p.numel() for p in model.parameters()),
            "feature_size": model.fc[0].out_features, "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    atomic_write(path.with_suffix(".json"), (json.dumps(info, indent=2) + "\n").encode())
    return {**info, "path": str(path)}


def load_splits(
    kind: str, data: Path | None, test_data: Path | None, size: int = 28, channels: int = 1,
) -> tuple[ImageSet, ImageSet]:
    """(train, test) sets: both splits of an IDX directory, or two folders / array files."""
    if kind in MNIST_LIKE:
        if data is None:
            raise TrainError(f"--data DIR is required for {kind} (a directory of IDX files)")
        return load_mnist_like(kind, Path(data), "train"), load_mnist_like(kind, Path(data), "test")
    if test_data is None:
        raise TrainError(f"--test-data PATH is required for {kind} datasets (the held-out images)")
    return (load_dataset(kind, data, "train", size, channels),
            load_dataset(kind, Path(test_data), "test", size, channels))


def fit_classifier(
    kind: str, data: Path | None, test_data: Path | None, out: Path | None, epochs: int = 5,
    seed: int = 0, batch_size: int = 128, command: str | None = None,
) -> dict:
    """Train a classifier on the train split, measure it on the test split, save both files."""
    if epochs < 1 or batch_size < 1:
        raise TrainError("--epochs and --batch-size must be positive")
    train, test = load_splits(kind, data, test_data)
    if test.labels is None:
        raise TrainError(f"the test set {test.name!r} has no labels: accuracy needs them")
    if out is None:
        if kind not in MNIST_LIKE:
            raise TrainError(f"--out FILE is required for {kind} datasets")
        out = WEIGHTS_DIR / f"{kind}.pt"
    model = train_classifier(train, epochs, seed, batch_size)
    about = {"dataset": kind, "train_images": len(train), "test_images": len(test),
             "test_accuracy": round(accuracy(model, test), 4), "epochs": epochs, "seed": seed,
             "batch_size": batch_size, "command": command}
    return save_classifier(model, out, about)
