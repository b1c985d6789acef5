"""Tiny model versions in the repository format of docs/model-format.md, built with onnx.helper."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from serve import latent as latent_spec
from serve.repository import FORMAT, JSON_FILE, ONNX_FILE, sha256_of, tensor_entries

LATENT = 8
SHAPE = (1, 6, 5)  # C, H, W: small, and not square so transposes would show
CLASSES = ["zero", "one", "two"]


def build_onnx(
    latent: int = LATENT,
    shape: tuple[int, int, int] = SHAPE,
    classes: int = 0,
    weight_seed: int = 0,
    symbolic_output: bool = False,
    batch_dependent: bool = False,
) -> bytes:
    """z[n, latent] (+ embedding[labels]) -> MatMul -> Sigmoid -> Reshape to [n, C, H, W].

    ``batch_dependent``: each sample's logits also get the batch's mean logits added, so a
    sample's output depends on what else is in its batch (what batching must never allow).

    ``symbolic_output``: the Reshape target depends on z at run time (it adds
    ``int(max(z) > inf)``, always 0), so onnxruntime cannot infer the output's static dims and
    reports the declared names instead, as with some exported graphs.
    """
    rng = np.random.default_rng(weight_seed)
    size = int(np.prod(shape))
    inits = [
        numpy_helper.from_array(rng.normal(0, 1, (latent, size)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([-1, *shape], dtype=np.int64), "target_shape"),
    ]
    inputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", latent])]
    nodes = []
    source = "z"
    if classes:
        inits.append(
            numpy_helper.from_array(
                rng.normal(0, 1, (classes, latent)).astype(np.float32), "embedding"
            )
        )
        inputs.append(helper.make_tensor_value_info("labels", TensorProto.INT64, ["n"]))
        nodes += [
            helper.make_node("Gather", ["embedding", "labels"], ["embedded"], axis=0),
            helper.make_node("Add", ["z", "embedded"], ["conditioned"]),
        ]
        source = "conditioned"
    nodes.append(helper.make_node("MatMul", [source, "w"], ["logits"]))
    if batch_dependent:
        nodes += [
            helper.make_node("ReduceMean", ["logits"], ["batch_mean"], axes=[0], keepdims=1),
            helper.make_node("Add", ["logits", "batch_mean"], ["mixed"]),
            helper.make_node("Sigmoid", ["mixed"], ["flat"]),
        ]
    else:
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["flat"]))
    target = "target_shape"
    if symbolic_output:
        inits.append(numpy_helper.from_array(np.array(np.inf, dtype=np.float32), "inf"))
        nodes += [
            helper.make_node("ReduceMax", ["z"], ["z_max"], keepdims=0),
            helper.make_node("Greater", ["z_max", "inf"], ["never"]),
            helper.make_node("Cast", ["never"], ["zero"], to=TensorProto.INT64),
            helper.make_node("Add", ["target_shape", "zero"], ["runtime_shape"]),
        ]
        target = "runtime_shape"
    nodes.append(helper.make_node("Reshape", ["flat", target], ["images"]))
    dims = ["n", "c", "h", "w"] if symbolic_output else ["n", *shape]
    output = helper.make_tensor_value_info("images", TensorProto.FLOAT, dims)
    graph = helper.make_graph(nodes, "tiny_generator", inputs, [output], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by any onnxruntime of the last years
    onnx.checker.check_model(model)
    return model.SerializeToString()


def metadata(
    name: str,
    version: int,
    onnx_bytes: bytes,
    latent: int = LATENT,
    shape: tuple[int, int, int] = SHAPE,
    classes: list[str] | None = None,
) -> dict[str, Any]:
    """A model.json as export writes it (the tensor entries from serve.repository)."""
    inputs, output = tensor_entries(latent, bool(classes), shape)
    return {
        "format": FORMAT,
        "name": name,
        "version": version,
        "created": "2026-11-30T03:00:00Z",
        "architecture": "tiny",
        "latent": {
            "size": latent,
            "distribution": latent_spec.DISTRIBUTION,
            "dtype": latent_spec.DTYPE,
            "spec": latent_spec.SPEC,
        },
        "inputs": inputs,
        "output": {**output, "range": [0, 1]},
        "conditional": bool(classes),
        "classes": classes,
        "dataset": {"name": "synthetic", "size": 0},
        "training": {},
        "metrics": {},
        "onnx": {
            "file": ONNX_FILE,
            "opset": 17,
            "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "max_abs_diff": 0.0,
            "parity_seeds": [],
        },
    }


def write_model(
    models_dir: Path,
    name: str = "tiny",
    version: int = 1,
    latent: int = LATENT,
    shape: tuple[int, int, int] = SHAPE,
    classes: list[str] | None = None,
    weight_seed: int = 0,
    symbolic_output: bool = False,
    batch_dependent: bool = False,
) -> Path:
    """Write a version directory atomically (temporary directory, then rename) and return it."""
    data = build_onnx(
        latent, shape, len(classes or []), weight_seed, symbolic_output, batch_dependent
    )
    meta = metadata(name, version, data, latent, shape, classes)
    target = models_dir / name / str(version)
    staging = models_dir / name / f".{version}.tmp"
    staging.mkdir(parents=True)
    (staging / ONNX_FILE).write_bytes(data)
    (staging / JSON_FILE).write_text(json.dumps(meta, indent=2))
    staging.rename(target)
    return target


def write_repository(models_dir: Path) -> Path:
    """The default test repository: ``tiny`` (versions 1 and 2) and conditional ``cond``."""
    write_model(models_dir, "tiny", 1, weight_seed=1)
    write_model(models_dir, "tiny", 2, weight_seed=2)
    write_model(models_dir, "cond", 1, classes=CLASSES, weight_seed=3)
    return models_dir


def edit_json(version_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``change`` to a version's model.json in place."""
    path = version_dir / JSON_FILE
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def corrupt_sha(version_dir: Path) -> None:
    """Make model.json's sha256 disagree with model.onnx."""
    edit_json(version_dir, lambda m: m["onnx"].update(sha256="0" * 64))


def corrupt_onnx(version_dir: Path) -> None:
    """Replace model.onnx with bytes that are not ONNX, keeping the sha256 consistent."""
    data = b"not an onnx model"
    (version_dir / ONNX_FILE).write_bytes(data)
    edit_json(version_dir, lambda m: m["onnx"].update(sha256=sha256_of(version_dir / ONNX_FILE)))


def wrong_output_shape(version_dir: Path) -> None:
    """Make model.json claim an output shape the ONNX graph does not have (same sha256)."""
    edit_json(version_dir, lambda m: m["output"].update(shape=["n", 1, 7, 7]))


def copy_repository(source: Path, target: Path) -> Path:
    """A copy of a repository, for tests that damage it."""
    shutil.copytree(source, target)
    return target
