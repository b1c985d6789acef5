"""Export a trained generator to the model repository: models/<name>/<version>/.

The version directory is built under a hidden temporary name beside its target (the service
skips hidden entries), fsynced, and renamed into place only after onnxruntime agrees with
torch, so the service never sees a half-written or wrong version, even after a kill, a full
disk or a power cut. Exports of one model take turns (a lock on its directory); each removes
the temporary directories that dead exports left. The layout and model.json are described in
docs/model-format.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from serve import latent
from serve.repository import (
    FORMAT,
    JSON_FILE,
    MODEL_NAME_RE,
    ONNX_FILE,
    ModelError,
    is_model_name,
    next_version,
    read_spec,
    sha256_of,
    tensor_entries,
)
from train.checkpoint import load_checkpoint
from train.config import TrainConfig
from train.errors import TrainError
from train.files import fsync_directory, fsync_file
from train.models import Generator, NetworkSpec

PARITY_SEEDS = list(range(8))
STAGING_PREFIX = ".tmp-"  # export's temporary directories: hidden, so never taken for a version


def checkpoint_path(run: Path) -> Path:
    """A run directory or a checkpoint file -> the checkpoint file."""
    run = Path(run)
    return run / "checkpoint.pt" if run.is_dir() else run


def load_trained_generator(run: Path, raw: bool = False) -> tuple[Generator, dict]:
    """The generator to publish (the weight average if the run kept one), in eval mode.

    ``raw`` takes the trained generator itself even when a weight average exists.
    """
    state = load_checkpoint(checkpoint_path(run))
    try:
        spec = NetworkSpec(**state["spec"])
        G = Generator(spec)
        G.load_state_dict(state["generator"] if raw else state["ema"] or state["generator"])
    except (TypeError, KeyError, RuntimeError) as e:
        raise TrainError(f"checkpoint does not hold a generator of this project: {e}") from None
    return G.eval(), state


class Tempered(torch.nn.Module):
    """G(temperature * z): the generator sampling its noise at another spread.

    Above 1 it is the truncation trick reversed: samples spread wider, trading a little
    precision for recall; below 1 the reverse. Callers still draw z from the standard normal
    (the latent spec is unchanged); the scaling is part of the model, and of its ONNX graph.
    """

    def __init__(self, G: Generator, temperature: float):
        super().__init__()
        self.G, self.spec, self.temperature = G, G.spec, temperature

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.G(z * self.temperature, labels)


def with_temperature(G: Generator, temperature: float) -> torch.nn.Module:
    """G itself at temperature 1, else G(temperature * z); a temperature must be positive."""
    if not (0 < temperature < float("inf")):
        raise TrainError(f"--temperature must be a positive number, got {temperature}")
    return G if temperature == 1 else Tempered(G, temperature).eval()


def read_metrics(path: Path, temperature: float) -> dict:
    """An evaluation report for model.json; refused if it scored another temperature."""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TrainError(f"cannot read the metrics file {path}: {e}") from None
    if not isinstance(metrics, dict):
        raise TrainError(f"{path} is not an evaluation report (a JSON object)")
    scored = metrics.get("temperature", 1.0)
    if scored != temperature:
        raise TrainError(f"{path} scored the generator at temperature {scored:g}, but this export "
                         f"is at {temperature:g}: evaluate with --temperature {temperature:g}")
    return metrics


def parity_inputs(spec: NetworkSpec, seeds: list[int]) -> dict[str, np.ndarray]:
    """The ONNX inputs for seeds under the latent spec (labels by the spec: seed % classes)."""
    feeds = {"z": latent.noise_for_seeds(seeds, spec.latent_size)}
    if spec.num_classes:
        feeds["labels"] = latent.labels_for_seeds(seeds, spec.num_classes)
    return feeds


def export_onnx(G: torch.nn.Module, path: Path, opset: int) -> None:
    """Write G as ONNX: z [n, d] (+ labels [n]) -> images [n, C, H, W], dynamic n."""
    spec = G.spec
    z = torch.zeros(2, spec.latent_size)
    args: tuple = (z,)
    names = ["z"]
    dynamic = {"z": {0: "n"}, "images": {0: "n"}}
    if spec.num_classes:
        args = (z, torch.zeros(2, dtype=torch.long))
        names.append("labels")
        dynamic["labels"] = {0: "n"}
    # The TorchScript exporter handles these plain feed-forward networks exactly (parity is
    # checked after); torch.export cannot trace nn.Unflatten with a dynamic batch here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            G, args, str(path), input_names=names, output_names=["images"],
            dynamic_axes=dynamic, opset_version=opset, dynamo=False,
        )


def parity(G: torch.nn.Module, onnx_path: Path, seeds: list[int]) -> float:
    """Max abs difference between torch and onnxruntime on the same seeds."""
    import onnxruntime as ort

    feeds = parity_inputs(G.spec, seeds)
    with torch.no_grad():
        labels = torch.from_numpy(feeds["labels"]) if "labels" in feeds else None
        expected = G(torch.from_numpy(feeds["z"]), labels).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["images"], feeds)[0]
    if got.shape != expected.shape:
        raise TrainError(f"onnxruntime returned shape {got.shape}, torch {expected.shape}")
    return float(np.abs(got - expected).max())


def model_metadata(
    name: str, version: int, G: torch.nn.Module, state: dict, onnx_path: Path, opset: int,
    max_abs_diff: float, metrics: dict, temperature: float = 1.0,
) -> dict:
    """The model.json document (see docs/model-format.md)."""
    spec = G.spec
    cfg = TrainConfig.from_dict(state["config"])
    inputs, output = tensor_entries(
        spec.latent_size, bool(spec.num_classes), (spec.channels, spec.image_size, spec.image_size)
    )
    return {
        "format": FORMAT,
        "name": name,
        "version": version,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "architecture": spec.arch,
        "latent": {"size": spec.latent_size, "distribution": latent.DISTRIBUTION,
                   "dtype": latent.DTYPE, "spec": latent.SPEC,
                   # The graph multiplies z by this before the generator (1: not at all).
                   "temperature": temperature},
        "inputs": inputs,
        "output": {**output, "range": [0.0, 1.0]},
        "conditional": bool(spec.num_classes),
        "classes": state.get("classes") if spec.num_classes else None,
        "dataset": state.get("dataset", {"name": cfg.dataset}),
        "training": {"config": cfg.to_dict(), "spec": spec.to_dict(), "steps": state["step"],
                     "command": state.get("command"), "resumed": state.get("resumed", [])},
        "metrics": metrics,
        "onnx": {"file": ONNX_FILE, "opset": opset, "sha256": sha256_of(onnx_path),
                 "max_abs_diff": max_abs_diff, "parity_seeds": PARITY_SEEDS},
    }


def export(
    run: Path, models_dir: Path, name: str, version: int | None = None, opset: int = 17,
    tolerance: float = 1e-4, metrics_file: Path | None = None, temperature: float = 1.0,
) -> Path:
    """Export a run's generator as models_dir/name/version; returns that directory."""
    if not is_model_name(name):
        raise TrainError(f"model name {name!r} must match {MODEL_NAME_RE.pattern}")
    if version is not None and version < 1:
        raise TrainError(f"version must be a positive integer, got {version}")
    metrics = read_metrics(Path(metrics_file), temperature) if metrics_file else {}
    G, state = load_trained_generator(run)
    G = with_temperature(G, temperature)
    model_dir = Path(models_dir) / name
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainError(f"cannot create {model_dir}: {e.strerror}") from None
    with export_lock(model_dir):
        remove_stale_staging(model_dir)
        target = publish(G, state, model_dir, name, version or next_version(model_dir), opset,
                         tolerance, metrics, temperature)
    return target


@contextlib.contextmanager
def export_lock(model_dir: Path) -> Iterator[None]:
    """Hold models/<name> exclusively (a lock on the directory itself, no file added to it):
    one export of a model at a time, so versions are numbered in turn and every temporary
    directory found while holding it is a dead export's."""
    fd = os.open(model_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_stale_staging(model_dir: Path) -> list[Path]:
    """Delete the temporary directories of exports that died (killed, a crash) before renaming.

    The service never reads them (hidden names are not versions); this only frees the space.
    Call with export_lock held.
    """
    stale = [p for p in model_dir.glob(f"{STAGING_PREFIX}*") if p.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def check_staged(staging: Path, name: str, version: int) -> None:
    """Run the service's reader on a staging directory as the version it will become, so an
    export never publishes a version the service would refuse."""
    try:
        read_spec(staging, name, version)
    except ModelError as e:
        raise TrainError(f"the service would refuse this export, so nothing was published: {e}") from None


def publish(
    G: torch.nn.Module, state: dict, model_dir: Path, name: str, version: int, opset: int,
    tolerance: float, metrics: dict, temperature: float,
) -> Path:
    """Build model_dir/version in a hidden temporary directory beside it and rename it into place.

    Both files and the directory are fsynced before the rename and the parent after it, so a
    crash or a power cut leaves the whole version or none. Any failure (a full disk, parity,
    a kill that Python sees) removes the temporary directory; nothing is published.
    """
    target = model_dir / str(version)
    if target.exists():
        raise TrainError(f"{target} already exists: versions are never overwritten")
    try:
        tmp = Path(tempfile.mkdtemp(dir=model_dir, prefix=f"{STAGING_PREFIX}{version}-"))
    except OSError as e:
        raise TrainError(f"cannot write to {model_dir}: {e.strerror}") from None
    try:
        try:
            onnx_path = tmp / ONNX_FILE
            export_onnx(G, onnx_path, opset)
            diff = parity(G, onnx_path, PARITY_SEEDS)
            if not diff <= tolerance:
                raise TrainError(
                    f"onnxruntime differs from torch by {diff:.3g} (> tolerance {tolerance:g}); "
                    "not published"
                )
            meta = model_metadata(name, version, G, state, onnx_path, opset, diff, metrics, temperature)
            with (tmp / JSON_FILE).open("w") as f:
                f.write(json.dumps(meta, indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            fsync_file(onnx_path)
            check_staged(tmp, name, version)
            os.chmod(tmp, 0o755)
            fsync_directory(tmp)
        except OSError as e:
            raise TrainError(f"cannot write {name} version {version} in {model_dir}: "
                             f"{e.strerror or e}; nothing was published") from None
        try:
            os.rename(tmp, target)  # atomic; fails if the version appeared meanwhile
        except OSError:
            raise TrainError(f"{target} already exists: versions are never overwritten") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_directory(model_dir)
    return target
