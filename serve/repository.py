"""The model repository on disk: ``<models_dir>/<name>/<version>/{model.onnx, model.json}``.

The one owner of the model format (docs/model-format.md): its constants and file names, the
model-name and version-directory rules, the tensor entries of model.json, the next version
number, and the reader (``read_spec``) that the service, export, sample, evaluate and the
benchmarks all use. This module reads and checks files only; it imports neither torch nor
onnxruntime, so the gunicorn master can validate the repository before it forks workers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve import latent

ONNX_FILE = "model.onnx"
JSON_FILE = "model.json"
FORMAT = 1
CHANNELS = (1, 3)  # grayscale or RGB: what a PNG tile can hold
# A model name: a directory under the repository, a URL path segment, GAN_DEFAULT_MODEL.
# ``\Z``, not ``$``: ``$`` also matches before a final newline.
MODEL_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")
_CHUNK = 1 << 20  # bytes hashed at a time

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


def is_model_name(name: str) -> bool:
    """Whether ``name`` is a valid model name (MODEL_NAME_RE)."""
    return MODEL_NAME_RE.match(name) is not None


def is_version_name(entry: str) -> bool:
    """A positive integer written in ASCII digits without leading zeros (not ``007``, ``²``)."""
    return entry.isascii() and entry.isdigit() and not entry.startswith("0")


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """The version directories of ``models/<name>``, ascending; anything else is skipped."""
    versions = {
        int(entry.name): entry
        for entry in model_dir.iterdir()
        if is_version_name(entry.name) and entry.is_dir()
    }
    return dict(sorted(versions.items()))


def next_version(model_dir: Path) -> int:
    """One more than the highest version of ``models/<name>`` (1 for a new model)."""
    return max(version_dirs(model_dir), default=0) + 1 if model_dir.is_dir() else 1


def resolve_version_dir(path: Path) -> tuple[Path, str, int]:
    """``models/<name>/<version>`` -> that version; ``models/<name>`` -> its highest version.

    Returns the directory, its model name and its version; a ModelError if ``path`` is
    neither a version directory nor a model directory holding one.
    """
    path = Path(path)
    if is_version_name(path.name) and path.is_dir() and (path / ONNX_FILE).is_file():
        return path, path.parent.name, int(path.name)
    if (path / ONNX_FILE).is_file():
        raise ModelError(f"{path} is not a version directory (models/<name>/<version>)")
    versions = version_dirs(path) if path.is_dir() else {}
    if not versions:
        raise ModelError(f"no exported model in {path} (expected <version>/{ONNX_FILE})")
    version = max(versions)
    return versions[version], path.name, version


def read_version_dir(path: Path) -> ModelVersion:
    """``resolve_version_dir`` then ``read_spec``: the checked spec of a model or version dir."""
    version_dir, name, version = resolve_version_dir(path)
    return read_spec(version_dir, name, version)


def tensor_entries(
    latent_size: int, conditional: bool, image_shape: tuple[int, int, int]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The ``inputs`` and ``output`` entries of model.json for a generator of this shape.

    ``z`` [n, latent_size] float32 (and ``labels`` [n] int64 when conditional) ->
    ``images`` [n, C, H, W] float32; ``n`` is the symbolic batch dimension.
    """
    inputs: list[dict[str, Any]] = [
        {"name": "z", "dtype": latent.DTYPE, "shape": ["n", latent_size]}
    ]
    if conditional:
        inputs.append({"name": "labels", "dtype": "int64", "shape": ["n"]})
    output = {"name": "images", "dtype": "float32", "shape": ["n", *image_shape]}
    return inputs, output


def scan(models_dir: Path) -> dict[str, dict[int, Path]]:
    """The version directories of each model name, skipping anything else."""
    if not models_dir.is_dir():
        raise RepositoryError(f"model repository {models_dir} does not exist or is not a directory")
    found: dict[str, dict[int, Path]] = {}
    for model_dir in sorted(models_dir.iterdir()):
        # Hidden entries are export's temporary directories or VCS files; plain files are notes.
        if model_dir.name.startswith(".") or not model_dir.is_dir():
            continue
        if not is_model_name(model_dir.name):
            log.warning("skipping %s: not a valid model name", model_dir)
            continue
        versions = version_dirs(model_dir)
        if versions:
            found[model_dir.name] = versions
    return found


def fingerprint(path: Path) -> tuple[int, ...]:
    """Identity of a version directory and its files, to notice when a bad one is replaced."""
    stats = [os.stat(path)]
    stats += [os.stat(path / f) for f in (ONNX_FILE, JSON_FILE) if (path / f).exists()]
    return tuple(x for st in stats for x in (st.st_ino, st.st_mtime_ns, st.st_size))


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks (a model file is never held whole)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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
    """Check one version directory's files and metadata (everything but the session).

    ``name`` and ``version`` are what model.json must say; they are given, not read from
    ``path``, so export checks its staging directory under the name and version it will
    publish it as.
    """
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
    wanted, _ = tensor_entries(size, conditional, (1, 1, 1))
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
