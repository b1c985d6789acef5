"""The model repository on disk: ``<models_dir>/<name>/<version>/{model.onnx, model.json}``.

This module reads and checks files only; it never creates an onnxruntime session, so the
gunicorn master can validate the repository before it forks workers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve import latent
from serve.config import MODEL_NAME_RE

ONNX_FILE = "model.onnx"
JSON_FILE = "model.json"
FORMAT = 1
CHANNELS = (1, 3)  # grayscale or RGB: what a PNG tile can hold

_KINDS = {int: "an integer", str: "a string", bool: "true or false", list: "a list", dict: "an object"}

log = logging.getLogger(__name__)


class ModelError(Exception):
    """A model version that is incomplete or does not match its metadata."""


class RepositoryError(Exception):
    """The model repository cannot be served."""


@dataclass(frozen=True)
class ModelVersion:
    """A model version whose files passed the checks that need no session."""

    name: str
    version: int
    path: Path
    meta: dict[str, Any]
    sha256: str
    latent_size: int
    classes: tuple[str, ...] | None
    image_shape: tuple[int, int, int]  # C, H, W

    @property
    def conditional(self) -> bool:
        """Whether the model takes a ``labels`` input."""
        return self.classes is not None

    @property
    def onnx_path(self) -> Path:
        """The ONNX file of this version."""
        return self.path / ONNX_FILE


def is_version_name(entry: str) -> bool:
    """A positive integer written without leading zeros."""
    return entry.isascii() and entry.isdigit() and not entry.startswith("0")


def scan(models_dir: Path) -> dict[str, dict[int, Path]]:
    """The version directories of each model name, skipping anything else."""
    if not models_dir.is_dir():
        raise RepositoryError(f"model repository {models_dir} does not exist or is not a directory")
    found: dict[str, dict[int, Path]] = {}
    for model_dir in sorted(models_dir.iterdir()):
        # Hidden entries are export's temporary directories or VCS files; plain files are notes.
        if model_dir.name.startswith(".") or not model_dir.is_dir():
            continue
        if not MODEL_NAME_RE.match(model_dir.name):
            log.warning("skipping %s: not a valid model name", model_dir)
            continue
        versions = {
            int(entry.name): entry
            for entry in model_dir.iterdir()
            if is_version_name(entry.name) and entry.is_dir()
        }
        if versions:
            found[model_dir.name] = dict(sorted(versions.items()))
    return found


def fingerprint(path: Path) -> tuple[int, ...]:
    """Identity of a version directory and its files, to notice when a bad one is replaced."""
    stats = [os.stat(path)]
    stats += [os.stat(path / f) for f in (ONNX_FILE, JSON_FILE) if (path / f).exists()]
    return tuple(x for st in stats for x in (st.st_ino, st.st_mtime_ns, st.st_size))


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _field(meta: dict[str, Any], dotted: str, kind: type) -> Any:
    value: Any = meta
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise ModelError(f"{JSON_FILE} lacks {dotted}")
        value = value[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ModelError(f"{JSON_FILE}: {dotted} must be {_KINDS[kind]}, got {json.dumps(value)}")
    return value


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise ModelError(message)


def _is_tensor(entry: Any, name: str, dtype: str, static: list[int]) -> bool:
    """Whether ``entry`` is ``{"name", "dtype", "shape": [<symbolic batch>, *static]}``."""
    return (
        isinstance(entry, dict)
        and entry.get("name") == name
        and entry.get("dtype") == dtype
        and isinstance(entry.get("shape"), list)
        and len(entry["shape"]) == 1 + len(static)
        and isinstance(entry["shape"][0], str)
        and entry["shape"][1:] == static
    )


def read_spec(path: Path, name: str, version: int) -> ModelVersion:
    """Check one version directory's files and metadata (everything but the session)."""
    try:
        return _read_spec(path, name, version)
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None


def _read_spec(path: Path, name: str, version: int) -> ModelVersion:
    for file in (ONNX_FILE, JSON_FILE):
        _expect((path / file).is_file(), f"missing {file}")
    try:
        meta = json.loads((path / JSON_FILE).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{JSON_FILE} is not valid JSON: {e}") from None
    _expect(isinstance(meta, dict), f"{JSON_FILE} must hold a JSON object")
    _expect(_field(meta, "format", int) == FORMAT, f"{JSON_FILE}: format must be {FORMAT}")
    _expect(_field(meta, "name", str) == name, f"{JSON_FILE}: name must be {name!r}")
    _expect(_field(meta, "version", int) == version, f"{JSON_FILE}: version must be {version}")

    size = _field(meta, "latent.size", int)
    _expect(size > 0, f"{JSON_FILE}: latent.size must be positive")
    distribution = _field(meta, "latent.distribution", str)
    _expect(
        distribution == latent.DISTRIBUTION,
        f"{JSON_FILE}: latent.distribution must be {latent.DISTRIBUTION!r}",
    )
    _expect(
        _field(meta, "latent.dtype", str) == latent.DTYPE,
        f"{JSON_FILE}: latent.dtype must be {latent.DTYPE!r}",
    )

    conditional = _field(meta, "conditional", bool)
    classes: tuple[str, ...] | None = None
    if conditional:
        names = _field(meta, "classes", list)
        _expect(
            bool(names) and all(isinstance(c, str) for c in names),
            f"{JSON_FILE}: classes must be a non-empty list of names for a conditional model",
        )
        classes = tuple(names)
    inputs = _field(meta, "inputs", list)
    wanted = [{"name": "z", "dtype": "float32", "shape": ["n", size]}]
    if conditional:
        wanted.append({"name": "labels", "dtype": "int64", "shape": ["n"]})
    _expect(
        len(inputs) == len(wanted)
        and _is_tensor(inputs[0], "z", "float32", [size])
        and (not conditional or _is_tensor(inputs[1], "labels", "int64", [])),
        f"{JSON_FILE}: inputs must be {json.dumps(wanted)}, got {json.dumps(inputs)}",
    )

    output = _field(meta, "output", dict)
    dims = output.get("shape")
    _expect(
        isinstance(dims, list)
        and len(dims) == 4
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims[1:])
        and _is_tensor(output, "images", "float32", dims[1:]),
        f'{JSON_FILE}: output must be {{"name": "images", "dtype": "float32", '
        f'"shape": ["n", C, H, W]}}, got {json.dumps(output)}',
    )
    channels, height, width = dims[1:]
    _expect(channels in CHANNELS, f"{JSON_FILE}: output channels must be 1 or 3, got {channels}")

    sha = _field(meta, "onnx.sha256", str).lower()
    actual = sha256_of(path / ONNX_FILE)
    _expect(actual == sha, f"sha256 of {ONNX_FILE} is {actual}, {JSON_FILE} says {sha}")
    return ModelVersion(
        name=name,
        version=version,
        path=path,
        meta=meta,
        sha256=sha,
        latent_size=size,
        classes=classes,
        image_shape=(channels, height, width),
    )


def find_versions(models_dir: Path) -> dict[str, dict[int, Path]]:
    """Like scan, but a repository without any version is a RepositoryError."""
    found = scan(models_dir)
    if not found:
        raise RepositoryError(
            f"model repository {models_dir} holds no models: expected "
            f"<name>/<version>/{ONNX_FILE} and {JSON_FILE} (see docs/model-format.md)"
        )
    return found


def _read_all(models_dir: Path) -> tuple[list[ModelVersion], list[str]]:
    """Every version's spec that ``read_spec`` passes, and the problems of the others."""
    specs: list[ModelVersion] = []
    problems: list[str] = []
    for name, versions in find_versions(models_dir).items():
        for version, path in versions.items():
            try:
                specs.append(read_spec(path, name, version))
            except (ModelError, OSError) as e:
                problems.append(str(e))
    return specs, problems


def check_repository(models_dir: Path) -> tuple[list[ModelVersion], list[str]]:
    """The versions whose files pass ``read_spec``, and the problems of the others.

    A RepositoryError only when there is nothing to serve: no directory, no model, or no
    version that passes (the service then refuses to start, saying why).
    """
    specs, problems = _read_all(models_dir)
    if not specs:
        raise RepositoryError(
            f"model repository {models_dir} has no servable version:\n  " + "\n  ".join(problems)
        )
    return specs, problems


def validate_repository(models_dir: Path) -> list[ModelVersion]:
    """Every version of every model, checked; any problem is a RepositoryError."""
    specs, problems = _read_all(models_dir)
    if problems:
        raise RepositoryError(
            f"model repository {models_dir} is invalid:\n  " + "\n  ".join(problems)
        )
    return specs
