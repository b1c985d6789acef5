"""`python -m train sample`: a PNG grid for seeds, from a checkpoint or an exported model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from serve import latent
from train.errors import TrainError
from train.images import save_grid


def resolve_model_dir(path: Path) -> Path:
    """models/<name> (its highest version) or models/<name>/<version> -> the version dir."""
    path = Path(path)
    if (path / "model.onnx").is_file():
        return path
    versions = sorted((int(p.name) for p in path.glob("*") if p.name.isdigit()), reverse=True)
    if not versions:
        raise TrainError(f"no exported model in {path} (expected <version>/model.onnx)")
    return path / str(versions[0])


def labels_for(seeds: list[int], labels: list[int] | None, num_classes: int) -> np.ndarray | None:
    """One label per seed: given per seed, one for all, or cycling through the classes."""
    if not num_classes:
        if labels:
            raise TrainError("--labels given, but the model is not conditional")
        return None
    if labels is None:
        labels = [s % num_classes for s in seeds]
    elif len(labels) == 1:
        labels = labels * len(seeds)
    if len(labels) != len(seeds):
        raise TrainError(f"{len(labels)} labels for {len(seeds)} seeds")
    if not all(0 <= y < num_classes for y in labels):
        raise TrainError(f"labels must be in 0..{num_classes - 1}")
    return np.array(labels, dtype=np.int64)


def images_from_onnx(model: Path, seeds: list[int], labels: list[int] | None) -> np.ndarray:
    import onnxruntime as ort

    version_dir = resolve_model_dir(model)
    meta = json.loads((version_dir / "model.json").read_text())
    classes = meta.get("classes") or []
    feeds = {"z": latent.noise_for_seeds(seeds, meta["latent"]["size"])}
    y = labels_for(seeds, labels, len(classes) if meta.get("conditional") else 0)
    if y is not None:
        feeds["labels"] = y
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    # One seed at a time, as the service does: a seed's image must not depend on the batch.
    rows = [session.run(["images"], {k: v[i : i + 1] for k, v in feeds.items()})[0]
            for i in range(len(seeds))]
    return np.concatenate(rows)


def images_from_checkpoint(run: Path, seeds: list[int], labels: list[int] | None) -> np.ndarray:
    import torch

    from train.export import load_generator

    G, _ = load_generator(run)
    z = torch.from_numpy(latent.noise_for_seeds(seeds, G.spec.latent_size))
    y = labels_for(seeds, labels, G.spec.num_classes)
    with torch.no_grad():
        return G(z, torch.from_numpy(y) if y is not None else None).numpy()


def sample(
    checkpoint: Path | None, model: Path | None, seeds: list[int], labels: list[int] | None,
    out: Path,
) -> Path:
    """Write the grid of seeds' images to out; returns out."""
    for s in seeds:
        try:
            latent.check_seed(s)
        except ValueError as e:
            raise TrainError(str(e)) from None
    if model is not None:
        images = images_from_onnx(model, seeds, labels)
    else:
        images = images_from_checkpoint(checkpoint, seeds, labels)
    return save_grid(images, out)
