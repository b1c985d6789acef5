"""The HTTP routes: health, models, generate, and the OpenAPI document."""

from __future__ import annotations

import array
import base64
import functools
import hashlib
import os
import re
import zlib
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import numpy as np
import onnxruntime
import PIL
import PIL.features
from flask import Blueprint, Response, current_app, jsonify, request

from serve import imaging, latent, metrics
from serve.config import Settings
from serve.errors import ApiError, shown
from serve.instrument import ENV_IMAGES, ENV_MODEL, ENV_VERSION
from serve.model import OnnxGenerator
from serve.openapi import IMMUTABLE, NAME_HEADER, REVALIDATE, VERSION_HEADER
from serve.redact import hide_paths
from serve.registry import ModelView, NotReady, Registry, UnknownModel
from serve.repository import ModelVersion
from serve.schema import parse_json, parse_query, validate

bp = Blueprint("api", __name__)


@dataclass(frozen=True)
class State:
    """What one worker's app holds in ``app.extensions["gan"]``."""

    settings: Settings
    registry: Registry
    request_schema: dict[str, Any]
    query_schema: dict[str, Any]
    openapi: dict[str, Any]


def state() -> State:
    """The current app's state."""
    return current_app.extensions["gan"]


@bp.before_app_request
def reload_models() -> None:
    """Pick up new model versions at most every GAN_RELOAD_INTERVAL seconds."""
    state().registry.maybe_reload()


@bp.get("/healthz")
def healthz() -> Any:
    """Liveness: the worker answers."""
    return {"status": "ok", "pid": os.getpid()}


@bp.get("/readyz")
def readyz() -> Any:
    """Readiness: 200 once the version policy has at least one version loaded."""
    registry = state().registry
    if not registry.ready:
        reason = " (the model repository cannot be read)" if registry.repository_error else ""
        raise NotReady(reason)
    return {
        "status": "ready",
        "models": registry.names(),
        # Served from memory while the repository cannot be read; the log says why.
        "repository": "unavailable" if registry.repository_error else "ok",
        "rejected": [
            {"model": r.name, "version": r.version, "reason": r.reason} for r in registry.rejected
        ],
    }


def _summary(model: ModelView) -> dict[str, Any]:
    spec = model.specs[model.default_version]
    return {
        "name": model.name,
        "default_version": spec.version,
        "versions": list(model.specs),
        "policy_versions": model.policy_versions,
        "loaded_versions": model.loaded_versions,
        "version_policy": str(state().settings.version_policy),
        "latent_size": spec.latent_size,
        "conditional": spec.conditional,
        "classes": None if spec.classes is None else list(spec.classes),
        "image_shape": list(spec.image_shape),
    }


@bp.get("/models")
def list_models() -> Any:
    """Every model served, with its versions on disk and those loaded in this worker."""
    registry = state().registry
    models = registry.describe()
    return {
        "default": registry.default_name if models else None,
        "version_cache": state().settings.version_cache,
        "models": [_summary(model) for model in models.values()],
    }


@bp.get("/models/<name>")
def get_model(name: str) -> Any:
    """One model: its default version's summary and every servable version's model.json."""
    models = state().registry.describe()
    if name not in models:
        raise UnknownModel(name, list(models))
    model = models[name]
    # model.json records where training ran (data and run directories, the commands): shown
    # only with GAN_SHOW_PATHS=on.
    metadata = [spec.meta for spec in model.specs.values()]
    if not state().settings.show_paths:
        metadata = [hide_paths(meta) for meta in metadata]
    return _summary(model) | {"metadata": metadata}


@bp.get("/openapi.json")
def openapi() -> Any:
    """The OpenAPI document."""
    return jsonify(state().openapi)


# What the bytes depend on besides the request and the model file: the encoding code (bump
# the scheme when it changes) and the libraries that compute and encode the images.
_ETAG_SCHEME = "gan-serve-etag/1"
_RENDERERS = (
    f"onnxruntime {onnxruntime.__version__}; numpy {np.__version__}; "
    f"pillow {PIL.__version__}; zlib {PIL.features.version('zlib') or zlib.ZLIB_RUNTIME_VERSION}"
)


def json_body(route: str) -> Any:
    """The request's JSON body, parsed (not yet validated); a 415 unless it is JSON."""
    if request.mimetype != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"{route} takes Content-Type: application/json, got "
            + (shown(request.mimetype) if request.mimetype else "none"),
        )
    return parse_json(request.get_data(cache=False))


@bp.post("/generate")
def generate_post() -> Response:
    """Images from a JSON request, as JSON (base64 PNGs), one PNG grid, or ``.npy``."""
    body = json_body("POST /generate")
    validate(body, state().request_schema)
    return _generate(body, body.get("format", "json"), safe=False)


@bp.get("/generate")
def generate_get() -> Response:
    """A PNG grid of the images of seeds seed .. seed+n-1, for browsers and ``curl -o``."""
    schema = state().query_schema
    query = parse_query(request.args.to_dict(flat=False), schema)
    validate(query, schema)
    return _generate(query, "png", safe=True)


def _generate(req: dict[str, Any], fmt: str, safe: bool) -> Response:
    """The response to a validated request; ``safe``: GET or HEAD, where a match is a 304."""
    generator = state().registry.resolve(req.get("model"), req.get("version"))
    spec = generator.spec
    environ = request.environ  # for the access log
    environ[ENV_MODEL] = spec.name
    environ[ENV_VERSION] = spec.version
    seeds: list[int] | None = None
    z: np.ndarray | None = None
    if "noise" in req:
        z = _noise(req["noise"], spec.latent_size, state().settings.max_samples)
        n = len(z)
    else:
        seeds = req["seeds"] if "seeds" in req else _seed_range(req["seed"], req.get("n", 1))
        n = len(seeds)
    labels = _labels(req.get("labels"), n, spec, seeds)

    # Every check that can fail has passed: the ETag names the bytes inference would give,
    # so a matching If-None-Match is answered without running the model or encoding.
    etag = _etag(spec, generator.providers, _format_key(fmt), seeds, z, labels)
    headers = {
        NAME_HEADER: spec.name,
        VERSION_HEADER: str(spec.version),
        "ETag": etag,
        # Only a named model at a named version can never change; the default model (the
        # first by name, or GAN_DEFAULT_MODEL) and its default version can, so revalidate.
        "Cache-Control": IMMUTABLE if "model" in req and "version" in req else REVALIDATE,
    }
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None and _none_match_fails(if_none_match, etag):
        if safe:
            return Response(status=304, headers=headers)
        raise ApiError(
            412,
            "precondition_failed",
            f"If-None-Match matches this response's ETag {etag}: the client holds these "
            "bytes already (GET answers such a request with 304 Not Modified)",
        )
    if seeds is not None:
        z = latent.noise_for_seeds(seeds, spec.latent_size)
    assert z is not None  # noise given, or made from the seeds
    fields = {} if fmt != "json" else {
        "model": spec.name,
        "version": spec.version,
        "shape": [n, *spec.image_shape],
        "seeds": seeds,
        "labels": None if labels is None else labels.tolist(),
    }
    return run_and_encode(generator, z, labels, fmt, f"{spec.name}-v{spec.version}", headers, fields)


def run_and_encode(
    generator: OnnxGenerator,
    z: np.ndarray,
    labels: np.ndarray | None,
    fmt: str,
    stem: str,
    headers: dict[str, str],
    fields: dict[str, Any],
    ncol: int | None = None,
) -> Response:
    """Run the model on ``z`` and answer in ``fmt``, counting the generation in the metrics and
    the access log: ``npy`` (the float32 images), ``png`` (one grid of ``ncol`` columns, by
    default the grid rule's) or ``json`` (``fields``, then the base64 PNG of each image).
    ``stem`` names the download; ``headers`` are added to the response."""
    spec = generator.spec
    started = perf_counter()
    images = generator.generate(z, labels)
    generated = perf_counter()
    if fmt == "npy":
        headers["Content-Disposition"] = f'attachment; filename="{stem}.npy"'
        response = Response(imaging.npy_bytes(images), mimetype="application/x-npy", headers=headers)
    else:
        tiles = imaging.to_uint8(images)
        if fmt == "png":
            headers["Content-Disposition"] = f'inline; filename="{stem}.png"'
            grid = imaging.png_bytes(imaging.grid(tiles, ncol=ncol))
            response = Response(grid, mimetype="image/png", headers=headers)
        else:
            pngs = [base64.b64encode(imaging.png_bytes(t)).decode("ascii") for t in tiles]
            response = jsonify(fields | {"images": pngs})
            response.headers.update(headers)
    metrics.observe_generation(
        spec.name, spec.version, len(z), fmt, generated - started, perf_counter() - generated
    )
    request.environ[ENV_IMAGES] = len(z)
    return response


@functools.lru_cache(maxsize=1024)
def _etag_base(sha256: str, name: str, version: int, providers: tuple[str, ...]) -> Any:
    """A sha256 already fed with everything one model version's ETags share (cached)."""
    # Other execution providers compute other bits; the CPU's alone leaves the tag as it was.
    runs_on = "" if providers == ("CPUExecutionProvider",) else f"{';'.join(providers)}\0"
    return hashlib.sha256(
        f"{_ETAG_SCHEME}\0{_RENDERERS}\0{runs_on}{sha256}\0{name}\0{version}\0".encode()
    )


def _format_key(fmt: str) -> str:
    """The format, and for JSON whether Flask indents it (it does in debug mode)."""
    if fmt == "json":
        app = current_app._get_current_object()  # type: ignore[attr-defined]  # one proxy lookup
        compact = app.json.compact
        if compact is False or (compact is None and app.debug):
            return "json-indented"
    return fmt


def _etag(
    spec: ModelVersion,
    providers: tuple[str, ...],
    fmt: str,
    seeds: list[int] | None,
    z: np.ndarray | None,
    labels: np.ndarray | None,
) -> str:
    """The strong ETag of the response: a hash of everything its bytes are a function of.

    The model file (sha256), name and version; the format; the seeds, or the float32 noise
    (so seeds and the noise they stand for have different ETags: the JSON differs); the
    labels used. n, and so the grid, follows from the seeds or the noise.
    """
    h = _etag_base(spec.sha256, spec.name, spec.version, providers).copy()
    if seeds is not None:
        h.update(f"{fmt}\0seeds {len(seeds)}\0".encode())
        h.update(array.array("q", seeds))  # seeds are in [0, 2**63 - 1]: int64
    else:
        assert z is not None
        h.update(f"{fmt}\0noise {z.shape[0]}x{z.shape[1]}\0".encode())
        h.update(np.ascontiguousarray(z, dtype=np.float32))
    if labels is None:
        h.update(b"\0no labels")
    else:
        h.update(b"\0labels\0")
        h.update(np.ascontiguousarray(labels, dtype=np.int64))
    return f'"{h.hexdigest()[:32]}"'


# RFC 9110 section 13.1.2: If-None-Match = "*" / #entity-tag, entity-tag = [ "W/" ] opaque-tag,
# opaque-tag = DQUOTE *etagc DQUOTE, etagc = %x21 / %x23-7E / obs-text; a list allows empty
# elements and optional whitespace around its commas. Linear: no two parts can match the
# same characters, so a long malformed header cannot make the regex backtrack.
_ENTITY_TAG = r'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"'
_ENTITY_TAG_RE = re.compile(r'(?:W/)?("[\x21\x23-\x7e\x80-\xff]*")')
_ENTITY_TAG_LIST_RE = re.compile(
    rf"[ \t]*(?:{_ENTITY_TAG}[ \t]*)?(?:,[ \t]*(?:{_ENTITY_TAG}[ \t]*)?)*"
)


def parse_if_none_match(value: str) -> frozenset[str] | None:
    """The opaque tags (quoted, ``W/`` dropped) of an If-None-Match value, ``{"*"}`` for ``*``.

    None when the value does not follow the grammar: such a header is ignored, as if absent.
    """
    if value.strip(" \t") == "*":
        return frozenset({"*"})
    if _ENTITY_TAG_LIST_RE.fullmatch(value) is None:
        return None
    return frozenset(_ENTITY_TAG_RE.findall(value))


def _none_match_fails(value: str, etag: str) -> bool:
    """Whether If-None-Match ``value`` is false for ``etag`` (weak comparison: ``W/`` ignored)."""
    tags = parse_if_none_match(value)
    return tags is not None and ("*" in tags or etag in tags)


def _seed_range(seed: int, n: int) -> list[int]:
    if seed + n - 1 > latent.SEED_MAX:
        raise ApiError(
            422, "seed_out_of_range", f"seed + n - 1 = {seed + n - 1} exceeds 2**63 - 1"
        )
    return list(range(seed, seed + n))


def _noise(rows: list[list[float]], size: int, max_samples: int) -> np.ndarray:
    lengths = {len(row) for row in rows}
    if lengths != {size}:
        got = f"[{len(rows)}, {lengths.pop()}]" if len(lengths) == 1 else "rows of unequal length"
        raise ApiError(
            422,
            "invalid_noise_shape",
            f"noise must have shape [n, {size}] with 1 <= n <= {max_samples}, got {got}",
        )
    try:
        with np.errstate(over="ignore"):  # values beyond float32 become inf, rejected below
            z = np.asarray(rows, dtype=np.float32)
    except OverflowError:  # an integer beyond even float64: JSON allows any number of digits
        z = np.array([np.inf], dtype=np.float32)
    if not np.isfinite(z).all():
        raise ApiError(
            422,
            "non_finite_noise",
            "noise values must be finite float32 numbers (no NaN, Infinity or |x| > 3.4e38)",
        )
    return z


def _labels(
    labels: int | list[int] | None, n: int, spec: ModelVersion, seeds: list[int] | None
) -> np.ndarray | None:
    if spec.classes is None:
        if labels is not None:
            raise ApiError(
                422,
                "labels_not_supported",
                f"model {spec.name} version {spec.version} is not conditional: drop `labels`",
            )
        return None
    count = len(spec.classes)
    if labels is None:
        if seeds is not None:
            # Seeds alone sample every class: the latent spec's label rule, seed % classes.
            return latent.labels_for_seeds(seeds, count)
        raise ApiError(
            422,
            "labels_required",
            f"model {spec.name} version {spec.version} is conditional: with `noise`, give "
            f"`labels`, one int in [0, {count}) or one per sample",
        )
    values = latent.broadcast_labels(labels, n)
    if values is None:
        assert isinstance(labels, list)
        raise ApiError(
            422,
            "invalid_labels_count",
            f"labels must be one int or one per sample ({n}), got {len(labels)}",
        )
    bad = [v for v in values if v >= count]
    if bad:
        raise ApiError(
            422,
            "label_out_of_range",
            f"labels must be in [0, {count}) for model {spec.name}, got {shown(bad[0])}",
        )
    return np.asarray(values, dtype=np.int64)
