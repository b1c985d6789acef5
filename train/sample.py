"""`python -m train sample`: a PNG grid for seeds, from a checkpoint or an exported model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from serve import latent
from serve.repository import ModelError, ModelVersion, read_version_dir, resolve_version_dir
from train.errors import TrainError
from train.images import save_grid


def resolve_model_dir(path: Path) -> Path:
    """models/<name> (its highest version) or models/<name>/<version> -> the version dir.

    The repository's rules (serve.repository.resolve_version_dir); a TrainError otherwise.
    """
    try:
        return resolve_version_dir(path)[0]
    except ModelError as e:
        raise TrainError(str(e)) from None


def read_model(path: Path) -> ModelVersion:
    """The version that ``path`` names, checked by the service's own reader (read_spec)."""
    try:
        return read_version_dir(path)
    except ModelError as e:
        raise TrainError(str(e)) from None


def labels_for(seeds: list[int], labels: list[int] | None, num_classes: int) -> np.ndarray | None:
    """One label per seed: given per seed, one for all, or the latent spec's seed % classes."""
    if not num_classes:
        if labels:
            raise TrainError("--labels given, but the model is not conditional")
        return None
    if labels is None:
        return latent.labels_for_seeds(seeds, num_classes)
    # --labels 3 is one label for every seed, as the service's "labels": 3.
    values = latent.broadcast_labels(labels[0] if len(labels) == 1 else labels, len(seeds))
    if values is None:
        raise TrainError(f"{len(labels)} labels for {len(seeds)} seeds")
    if not all(0 <= y < num_classes for y in values):
        raise TrainError(f"labels must be in 0..{num_classes - 1}")
    return np.array(values, dtype=np.int64)


def images_from_onnx(model: Path, seeds: list[int], labels: list[int] | None) -> np.ndarray:
    """Images from an exported model, checked and run exactly as the service does."""
    from serve.model import load_onnx_generator

    spec = read_model(model)
    try:
        generator = load_onnx_generator(spec, threads=len(os.sched_getaffinity(0)))
    except ModelError as e:
        raise TrainError(str(e)) from None
    y = labels_for(seeds, labels, len(spec.classes or ()))
    return generator.generate(latent.noise_for_seeds(seeds, spec.latent_size), y)


def images_from_checkpoint(run: Path, seeds: list[int], labels: list[int] | None) -> np.ndarray:
    import torch

    from train.export import load_trained_generator

    G, _ = load_trained_generator(run)
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
