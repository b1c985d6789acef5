"""The HTTP routes: health, models, generate, and the OpenAPI document."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from flask import Blueprint, Response, current_app, jsonify, request

from serve import imaging, latent
from serve.config import Settings
from serve.errors import ApiError
from serve.model import Generator
from serve.openapi import NAME_HEADER, VERSION_HEADER
from serve.registry import Registry
from serve.repository import ModelSpec
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
    """Readiness: 200 once at least one model is loaded."""
    models = state().registry.models
    if not models:
        raise ApiError(503, "not_ready", "no model is loaded")
    return {"status": "ready", "models": list(models)}


def _summary(name: str, versions: dict[int, Generator]) -> dict[str, Any]:
    spec = versions[max(versions)].spec
    return {
        "name": name,
        "default_version": spec.version,
        "versions": list(versions),
        "latent_size": spec.latent_size,
        "conditional": spec.conditional,
        "classes": None if spec.classes is None else list(spec.classes),
        "image_shape": list(spec.image_shape),
    }


@bp.get("/models")
def list_models() -> Any:
    """Every model served, with its versions."""
    registry = state().registry
    models = registry.models
    return {
        "default": registry.default_name if models else None,
        "models": [_summary(name, versions) for name, versions in models.items()],
    }


@bp.get("/models/<name>")
def get_model(name: str) -> Any:
    """One model: its default version's summary and every version's model.json."""
    models = state().registry.models
    if name not in models:
        raise ApiError(404, "unknown_model", f"unknown model {name!r}; served: {', '.join(models)}")
    versions = models[name]
    return _summary(name, versions) | {"metadata": [g.spec.meta for g in versions.values()]}


@bp.get("/openapi.json")
def openapi() -> Any:
    """The OpenAPI document."""
    return jsonify(state().openapi)


@bp.post("/generate")
def generate_post() -> Response:
    """Images from a JSON request, as JSON (base64 PNGs), one PNG grid, or ``.npy``."""
    if request.mimetype != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"POST /generate takes Content-Type: application/json, got {request.mimetype or 'none'}",
        )
    body = parse_json(request.get_data(cache=False))
    validate(body, state().request_schema)
    return _generate(body, body.get("format", "json"))


@bp.get("/generate")
def generate_get() -> Response:
    """A PNG grid of the images of seeds seed .. seed+n-1, for browsers and ``curl -o``."""
    schema = state().query_schema
    query = parse_query(request.args.to_dict(flat=False), schema)
    validate(query, schema)
    return _generate(query, "png")


def _generate(req: dict[str, Any], fmt: str) -> Response:
    generator = state().registry.resolve(req.get("model"), req.get("version"))
    spec = generator.spec
    seeds: list[int] | None = None
    if "noise" in req:
        z = _noise(req["noise"], spec.latent_size, state().settings.max_samples)
    else:
        seeds = req["seeds"] if "seeds" in req else _seed_range(req["seed"], req.get("n", 1))
        z = latent.noise_for_seeds(seeds, spec.latent_size)
    labels = _labels(req.get("labels"), len(z), spec, seeds)
    images = generator.generate(z, labels)

    headers = {NAME_HEADER: spec.name, VERSION_HEADER: str(spec.version)}
    stem = f"{spec.name}-v{spec.version}"
    if fmt == "npy":
        headers["Content-Disposition"] = f'attachment; filename="{stem}.npy"'
        return Response(imaging.npy_bytes(images), mimetype="application/x-npy", headers=headers)
    tiles = imaging.to_uint8(images)
    if fmt == "png":
        headers["Content-Disposition"] = f'inline; filename="{stem}.png"'
        grid = imaging.png_bytes(imaging.grid(tiles))
        return Response(grid, mimetype="image/png", headers=headers)
    response = jsonify(
        model=spec.name,
        version=spec.version,
        shape=list(images.shape),
        seeds=seeds,
        labels=None if labels is None else labels.tolist(),
        images=[base64.b64encode(imaging.png_bytes(t)).decode("ascii") for t in tiles],
    )
    response.headers.update(headers)
    return response


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
    with np.errstate(over="ignore"):  # values beyond float32 become inf, rejected just below
        z = np.asarray(rows, dtype=np.float32)
    if not np.isfinite(z).all():
        raise ApiError(
            422,
            "non_finite_noise",
            "noise values must be finite float32 numbers (no NaN, Infinity or |x| > 3.4e38)",
        )
    return z


def _labels(
    labels: int | list[int] | None, n: int, spec: ModelSpec, seeds: list[int] | None
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
    values = [labels] * n if isinstance(labels, int) else labels
    if len(values) != n:
        raise ApiError(
            422,
            "invalid_labels_count",
            f"labels must be one int or one per sample ({n}), got {len(values)}",
        )
    bad = [v for v in values if v >= count]
    if bad:
        raise ApiError(
            422,
            "label_out_of_range",
            f"labels must be in [0, {count}) for model {spec.name}, got {bad[0]}",
        )
    return np.asarray(values, dtype=np.int64)
