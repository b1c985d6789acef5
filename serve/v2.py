"""The Open Inference Protocol v2 (KServe / Triton HTTP/REST) beside ``/generate``.

Health, server and model metadata, and ``infer`` with JSON tensors and the binary tensor data
extension. Inference runs through the same ``OnnxGenerator.generate`` as ``/generate`` (its
batching rule included), so the images are byte-identical to ``format: npy`` for the same z
and labels. Every error on a ``/v2`` route is the protocol's ``{"error": "<message>"}``.
"""

from __future__ import annotations

import json
from time import perf_counter
from typing import Any

import numpy as np
from flask import Blueprint, Response, jsonify, request

from serve import metrics
from serve.api import state
from serve.errors import ApiError, shown
from serve.instrument import ENV_IMAGES, ENV_MODEL, ENV_VERSION
from serve.model import OnnxGenerator
from serve.openapi import API_VERSION, NAME_HEADER, VERSION_HEADER
from serve.registry import NotReady, UnknownModel, UnknownVersion
from serve.repository import ModelVersion, is_version_name
from serve.schema import JsonBodyError, is_integer, load_json

bp = Blueprint("v2", __name__)

SERVER_NAME = "gan-serve"
EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "onnxruntime_onnx"
HEADER_LENGTH = "Inference-Header-Content-Length"
# The datatypes of the model's tensors, little-endian as the binary extension sends them.
_DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}
_INT64_MAX = np.iinfo(np.int64).max


def _bad(message: str) -> ApiError:
    """A 400: the protocol's answer to a request it cannot run."""
    return ApiError(400, "v2_bad_request", message)


# --- Health and metadata -------------------------------------------------------------------


@bp.get("/v2")
def server_metadata() -> Any:
    """Server metadata: name, version, extensions."""
    return {"name": SERVER_NAME, "version": API_VERSION, "extensions": EXTENSIONS}


@bp.get("/v2/health/live")
def server_live() -> Response:
    """Liveness: 200, empty body, while the worker answers."""
    return Response(status=200)


@bp.get("/v2/health/ready")
def server_ready() -> Response:
    """Readiness: 200 once the version policy has a version loaded, else 503."""
    if not state().registry.ready:
        raise NotReady()
    return Response(status=200)


@bp.get("/v2/models/<name>")
@bp.get("/v2/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> Any:
    """Model metadata of a version (default: the default version); reads no model file."""
    models = state().registry.describe()
    model = models.get(name)
    if model is None:
        raise UnknownModel(name, list(models))
    number = model.default_version if version is None else _version_number(name, version)
    spec = model.specs.get(number)
    if spec is None:  # a number as _version_number writes it: the path's own digits
        raise UnknownVersion(name, number, list(model.specs))
    inputs = [{"name": "z", "datatype": "FP32", "shape": [-1, spec.latent_size]}]
    if spec.conditional:
        inputs.append({"name": "labels", "datatype": "INT64", "shape": [-1]})
    return {
        "name": spec.name,
        "versions": [str(v) for v in model.specs],
        "platform": PLATFORM,
        "inputs": inputs,
        "outputs": [{"name": "images", "datatype": "FP32", "shape": [-1, *spec.image_shape]}],
    }


@bp.get("/v2/models/<name>/ready")
@bp.get("/v2/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None) -> Response:
    """200 when an infer request for this model version would run now (404 or 503 if not)."""
    _resolve(name, version)
    return Response(status=200)


def _version_number(name: str, text: str) -> int:
    """A version in a path: a positive integer without leading zeros, else a 404."""
    if is_version_name(text) and len(text) <= 18:
        return int(text)
    if name not in state().registry.names():
        raise UnknownModel(name)
    raise UnknownVersion(name, text)


def _resolve(name: str, version: str | None) -> OnnxGenerator:
    number = None if version is None else _version_number(name, version)
    return state().registry.resolve(name, number)


# --- Inference -----------------------------------------------------------------------------


@bp.post("/v2/models/<name>/infer")
@bp.post("/v2/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None) -> Response:
    """Images for the tensors ``z`` (and ``labels``), as JSON data or binary tensor data."""
    generator = _resolve(name, version)
    spec = generator.spec
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        raise ApiError(
            415, "unsupported_encoding", f"Content-Encoding {encoding} is not supported; "
            "send the body uncompressed"
        )
    header, binary = _split(request.get_data(cache=False))
    req = _parse_header(header)
    z, labels = _inputs(req["inputs"], binary, spec, state().settings.max_samples)
    as_binary = _binary_output(req)

    started = perf_counter()
    images = generator.generate(z, labels)
    generated = perf_counter()

    output: dict[str, Any] = {"name": "images", "datatype": "FP32", "shape": list(images.shape)}
    body: dict[str, Any] = {"model_name": spec.name, "model_version": str(spec.version)}
    if "id" in req:
        body["id"] = req["id"]
    body["outputs"] = [output]
    headers = {NAME_HEADER: spec.name, VERSION_HEADER: str(spec.version)}
    if not as_binary:
        output["data"] = images.ravel().tolist()  # float32 values: exact as JSON doubles
        response = jsonify(body)
        response.headers.update(headers)
    else:
        raw = np.ascontiguousarray(images, dtype=_DTYPES["FP32"]).tobytes()
        output["parameters"] = {"binary_data_size": len(raw)}
        head = json.dumps(body, separators=(",", ":")).encode()
        headers[HEADER_LENGTH] = str(len(head))
        response = Response(head + raw, mimetype="application/octet-stream", headers=headers)
    metrics.observe_generation(
        spec.name, spec.version, len(images), "v2-binary" if as_binary else "v2-json",
        generated - started, perf_counter() - generated,
    )
    request.environ[ENV_MODEL], request.environ[ENV_VERSION] = spec.name, spec.version
    request.environ[ENV_IMAGES] = len(images)
    return response


def _split(body: bytes) -> tuple[bytes, memoryview]:
    """The JSON header and the binary tensor data after it (Inference-Header-Content-Length)."""
    text = request.headers.get(HEADER_LENGTH)
    if text is None:
        return body, memoryview(b"")
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise _bad(f"{HEADER_LENGTH} must be a non-negative integer, got {shown(text)}")
    length = int(text)
    if length > len(body):
        raise _bad(
            f"{HEADER_LENGTH} is {length} but the request body has only {len(body)} bytes"
        )
    view = memoryview(body)
    return body[:length], view[length:]


def _parse_header(header: bytes) -> dict[str, Any]:
    """The inference request object, its fields' JSON types checked."""
    try:
        req = load_json(header)
    except JsonBodyError as e:
        raise _bad(f"the inference request {e}") from None
    if not isinstance(req, dict):
        raise _bad("the inference request must be a JSON object")
    if "id" in req and not isinstance(req["id"], str):
        raise _bad("id must be a string")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("inputs must be a non-empty array of tensors")
    return req


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"{where}.parameters must be an object")
    if "shared_memory_region" in value:
        raise _bad(f"{where}: shared memory is not supported; send the tensor in the body")
    return value


def _flag(parameters: dict[str, Any], key: str, where: str, default: bool) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise _bad(f"{where}.parameters.{key} must be true or false")
    return value


def _binary_output(req: dict[str, Any]) -> bool:
    """Whether ``images`` goes back as binary data: its own binary_data, else the request's
    binary_data_output, else JSON."""
    params = req.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise _bad("parameters must be an object")
    default = _flag(params or {}, "binary_data_output", "request", False)
    outputs = req.get("outputs")
    if outputs is None:
        return default
    if not isinstance(outputs, list):
        raise _bad("outputs must be an array")
    binary = default
    for i, out in enumerate(outputs):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise _bad(f"outputs[{i}] must be an object with a string name")
        if out["name"] != "images":
            raise _bad(f"unknown output {shown(out['name'])}; the model's only output is 'images'")
        if i > 0:
            raise _bad("output 'images' is requested more than once")
        where = f"output {out['name']!r}"
        params = _parameters(out.get("parameters"), where)
        if "classification" in params:
            raise _bad(f"{where}: the classification extension is not supported")
        binary = _flag(params, "binary_data", where, default)
    return binary


def _inputs(
    tensors: list[Any], binary: memoryview, spec: ModelVersion, max_samples: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """z [n, d] float32 and labels [n] int64 (or None), every check the model needs done."""
    wanted = {"z": "FP32", "labels": "INT64"} if spec.conditional else {"z": "FP32"}
    found: dict[str, tuple[list[int], np.ndarray]] = {}
    offset = 0
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise _bad(f"inputs[{i}] must be an object with a string name")
        name = tensor["name"]
        if name not in wanted:
            raise _bad(
                f"model {spec.name} version {spec.version} has no input {shown(name)}; its inputs: "
                + ", ".join(f"{k} ({v})" for k, v in wanted.items())
            )
        if name in found:
            raise _bad(f"input {name!r} is given more than once")
        datatype = tensor.get("datatype")
        if datatype != wanted[name]:
            raise _bad(
                f"input {name!r} must have datatype {wanted[name]}, got {shown(datatype)}"
            )
        shape = _integers(tensor.get("shape"))
        if shape is None or not shape:
            raise _bad(f"input {name!r}: shape must be a non-empty array of non-negative integers")
        _check_shape(name, shape, spec, max_samples, found)
        params = _parameters(tensor.get("parameters"), f"input {name!r}")
        dtype = _DTYPES[datatype]
        if "binary_data_size" in params:
            sizes = _integers([params["binary_data_size"]])
            if sizes is None:
                raise _bad(f"input {name!r}: binary_data_size must be a non-negative integer")
            size = sizes[0]
            if "data" in tensor:
                raise _bad(f"input {name!r} has both data and binary_data_size")
            need = int(np.prod(shape)) * dtype.itemsize
            if size != need:
                raise _bad(
                    f"input {name!r}: binary_data_size is {size}, but {datatype} {shown(shape)} "
                    f"takes {need} bytes"
                )
            if offset + size > len(binary):
                raise _bad(
                    f"input {name!r}: its {size} bytes of binary data run past the end of the "
                    f"body ({len(binary) - offset} bytes left after the JSON header and the "
                    "tensors before it)"
                )
            array = np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(shape)
            offset += size
        elif "data" in tensor:
            array = _from_json(name, tensor["data"], shape, datatype)
        else:
            raise _bad(f"input {name!r} has neither data nor parameters.binary_data_size")
        found[name] = (shape, array)
    if offset != len(binary):
        raise _bad(
            f"{len(binary) - offset} bytes of binary data after the JSON header belong to no "
            "input (each binary input gives its parameters.binary_data_size)"
        )
    if "z" not in found:
        raise _bad(f"input 'z' (FP32 [n, {spec.latent_size}]) is required")
    z = found["z"][1]
    if not np.isfinite(z).all():
        raise _bad("input 'z' must hold finite FP32 values (no NaN or Infinity)")
    if not spec.conditional:
        return z, None
    assert spec.classes is not None
    count = len(spec.classes)
    if "labels" not in found:
        raise _bad(
            f"model {spec.name} version {spec.version} is conditional: give input 'labels' "
            f"(INT64 [n] or [n, 1], each in [0, {count}))"
        )
    labels = found["labels"][1].reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= count):
        bad = labels[(labels < 0) | (labels >= count)][0]
        raise _bad(f"labels must be in [0, {count}) for model {spec.name}, got {bad}")
    return z, labels


def _check_shape(
    name: str, shape: list[int], spec: ModelVersion, max_samples: int,
    found: dict[str, tuple[list[int], np.ndarray]],
) -> None:
    """z: [n, d] with 1 <= n <= GAN_MAX_SAMPLES; labels: [n] or [n, 1], z's n when z came first."""
    if name == "z":
        if len(shape) != 2 or shape[1] != spec.latent_size or shape[0] < 1:
            raise _bad(
                f"input 'z' must have shape [n, {spec.latent_size}] with 1 <= n <= "
                f"{max_samples}, got {shown(shape)}"
            )
        if shape[0] > max_samples:
            raise _bad(
                f"too many samples: input 'z' has {shape[0]} rows, at most {max_samples} "
                "(GAN_MAX_SAMPLES) per request"
            )
        other = found.get("labels")
        n_other = None if other is None else other[0][0]
    else:
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise _bad(f"input 'labels' must have shape [n] or [n, 1], got {shown(shape)}")
        other = found.get("z")
        n_other = None if other is None else other[0][0]
        if n_other is None and shape[0] > max_samples:
            raise _bad(
                f"too many samples: input 'labels' has {shape[0]} rows, at most "
                f"{max_samples} (GAN_MAX_SAMPLES) per request"
            )
    if n_other is not None and n_other != shape[0]:
        raise _bad(f"inputs 'z' and 'labels' must have the same n, got {n_other} and {shape[0]}")


def _from_json(name: str, data: Any, shape: list[int], datatype: str) -> np.ndarray:
    """JSON tensor data, flat (row-major) or nested as ``shape``, as an array of ``shape``."""
    if not isinstance(data, list):
        raise _bad(f"input {name!r}: data must be an array")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):  # ragged, too deep
        array = None
    if array is not None and datatype == "INT64" and array.dtype.kind == "f":
        array = _integral(array)  # 1.0 is an integer in JSON Schema: take it as 1
    kinds = "iuf" if datatype == "FP32" else "iu"
    if array is None or array.dtype.kind not in kinds:
        what = "numbers" if datatype == "FP32" else "integers"
        raise _bad(f"input {name!r}: {datatype} data must be {what}, flat or nested as its shape")
    count = int(np.prod(shape))
    if array.size != count or (array.ndim != 1 and list(array.shape) != shape):
        raise _bad(
            f"input {name!r}: data has shape {shown(list(array.shape))}, not {shown(shape)} or {count} "
            "values flat"
        )
    if datatype == "FP32":
        with np.errstate(over="ignore"):  # beyond float32: inf, refused as non-finite
            return array.astype(np.float32).reshape(shape)
    if array.dtype.kind == "u" and array.size and array.max() > _INT64_MAX:
        raise _bad(f"input {name!r}: values beyond INT64")
    return array.astype(np.int64).reshape(shape)


def _integers(values: Any) -> list[int] | None:
    """A JSON array of integers in [0, 2**63 - 1] as ints (``2.0`` is the integer 2, as in
    JSON Schema), or None if it is anything else."""
    if not isinstance(values, list) or not all(is_integer(v) for v in values):
        return None
    if not all(0 <= v <= _INT64_MAX for v in values):  # an infinity too: a literal too long
        return None
    return [int(v) for v in values]


def _integral(array: np.ndarray) -> np.ndarray | None:
    """Float data whose values are all integers within int64, as int64; else None."""
    with np.errstate(invalid="ignore"):
        whole = bool(np.all(np.isfinite(array) & (np.floor(array) == array)))
        if not whole or (array.size and float(np.abs(array).max()) >= 2.0**63):
            return None
    return array.astype(np.int64)
