"""Prometheus metrics of the service (``GET /metrics``), summed across gunicorn's workers.

Under gunicorn, the master sets ``PROMETHEUS_MULTIPROC_DIR`` (GAN_METRICS_DIR, see
serve/gunicorn.conf.py) before it forks, so prometheus_client writes each worker's figures to
memory-mapped files there and a scrape of any worker reads and sums all of them. prometheus_client
chooses that mode when it is first imported, so this module must not be imported in the master
before the variable is set. Without it (the Flask test client, ``flask run``) the figures are
this process's own.

Every label value is bounded: routes are Flask's rules (``/models/<name>``, not the path), methods
outside a fixed set are ``other``, models and versions come from the model repository.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Blueprint, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Latency buckets in seconds: 0.1 ms (a 304, /healthz) to 10 s (a large request on a busy host).
BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of a request no rule matches (a 404)

# The metrics live in a registry of their own; in multiprocess mode a scrape reads the files
# instead (every worker's), through a MultiProcessCollector.
LOCAL = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "gan_http_requests_total", "HTTP requests answered by the app, by route, method and status.",
    ["route", "method", "status"], registry=LOCAL,
)
REQUEST_DURATION = Histogram(
    "gan_http_request_duration_seconds",
    "Time the app took to answer a request (from the WSGI call to the response), by route.",
    ["route"], buckets=BUCKETS, registry=LOCAL,
)
INFERENCE_DURATION = Histogram(
    "gan_inference_duration_seconds",
    "Time /generate spent running the generator (noise included), by model.",
    ["model"], buckets=BUCKETS, registry=LOCAL,
)
ENCODING_DURATION = Histogram(
    "gan_encoding_duration_seconds",
    "Time /generate spent encoding images into the response body, by format.",
    ["format"], buckets=BUCKETS, registry=LOCAL,
)
IMAGES = Counter(
    "gan_images_generated_total", "Images generated, by model and version.",
    ["model", "version"], registry=LOCAL,
)
MODEL_LOADS = Counter(
    "gan_model_loads_total",
    "Model versions loaded into an onnxruntime session (at start, on a rescan, on demand).",
    ["model"], registry=LOCAL,
)
MODEL_RELOADS = Counter(
    "gan_model_reloads_total",
    "Rescans of the model repository for new versions (hot reload), by result (ok, failed).",
    ["result"], registry=LOCAL,
)
VERSIONS_REJECTED = Counter(
    "gan_model_versions_rejected_total",
    "Model versions on disk refused: bad files or model.json, or a session that fails its checks.",
    ["model"], registry=LOCAL,
)
VERSIONS_LOADED = Gauge(
    "gan_model_versions_loaded",
    "Workers holding a session of the model version (policy and on-demand cache), live ones only.",
    ["model", "version", "sha256"], multiprocess_mode="livesum", registry=LOCAL,
)

# Children by label values: .labels() validates and locks on every call, a dict lookup does not.
_request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
_inference_children: dict[str, Any] = {}
_encoding_children: dict[str, Any] = {}
_image_children: dict[tuple[str, int], Any] = {}


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """Count one answered request and its duration."""
    if method not in METHODS:  # any token is a method to HTTP: keep the labels (and keys) bounded
        method = "other"
    key = (route, method, status)
    children = _request_children.get(key)
    if children is None:
        children = _request_children[key] = (
            REQUESTS.labels(route, method, str(status)),
            REQUEST_DURATION.labels(route),
        )
    children[0].inc()
    children[1].observe(seconds)


def observe_generation(
    model: str, version: int, images: int, fmt: str, inference: float, encoding: float
) -> None:
    """Count the images of one /generate response and the time inference and encoding took."""
    child = _image_children.get((model, version))
    if child is None:
        child = _image_children[model, version] = IMAGES.labels(model, str(version))
    child.inc(images)
    child = _inference_children.get(model)
    if child is None:
        child = _inference_children[model] = INFERENCE_DURATION.labels(model)
    child.observe(inference)
    child = _encoding_children.get(fmt)
    if child is None:
        child = _encoding_children[fmt] = ENCODING_DURATION.labels(fmt)
    child.observe(encoding)


def set_loaded(loaded: set[tuple[str, int, str]], before: set[tuple[str, int, str]]) -> None:
    """Publish the versions this worker holds now: ``(model, version, sha256)`` each."""
    # Multiprocess mode cannot remove a label set: an unloaded version drops to 0.
    for name, version, sha256 in before - loaded:
        VERSIONS_LOADED.labels(name, str(version), sha256[:12]).set(0)
    for name, version, sha256 in loaded - before:
        VERSIONS_LOADED.labels(name, str(version), sha256[:12]).set(1)


def scrape_registry() -> CollectorRegistry:
    """What a scrape reads: every worker's files in multiprocess mode, else this process."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return LOCAL
    registry = CollectorRegistry(auto_describe=True)
    _multiprocess.MultiProcessCollector(registry, path=path)  # reads the files at each scrape
    return registry


bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    """Every metric in the Prometheus text format (version 0.0.4)."""
    return Response(generate_latest(scrape_registry()), content_type=CONTENT_TYPE_LATEST)
