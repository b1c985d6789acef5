"""The Flask app factory: one per gunicorn worker, called after fork."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import click
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from serve import interpolate, page
from serve.api import State, bp
from serve.auth import exempt_paths, install_guard
from serve.config import REPLACEMENT_WORKER_ENV, VARIABLES, ConfigError, load_settings
from serve.errors import ERROR_CODES, ApiError, checked_code, error_json
from serve.instrument import instrument
from serve.metrics import bp as metrics_bp
from serve.model import check_providers, tune_malloc
from serve.openapi import PID_HEADER, add_security, build_spec
from serve.ratelimit import open_limiter
from serve.registry import (
    NotReady,
    Registry,
    RegistryError,
    UnknownModel,
    UnknownVersion,
    VersionNotLoaded,
    VersionUnavailable,
)
from serve.schema import generate_query_schema, generate_request_schema
from serve.v2 import bp as v2_bp

log = logging.getLogger(__name__)

# Werkzeug's HTTP errors by status; any other status is ``http_error``.
_HTTP_CODES = {
    status: checked_code(status, code)
    for status, code in {
        400: "bad_request",
        404: "not_found",
        405: "method_not_allowed",
        413: "body_too_large",
        415: "unsupported_media_type",
    }.items()
}
# The registry's domain errors as HTTP: each one's code, whose status ERROR_CODES gives.
_REGISTRY_CODES: dict[type[RegistryError], str] = {
    NotReady: "not_ready",
    UnknownModel: "unknown_model",
    UnknownVersion: "unknown_version",
    VersionNotLoaded: "version_not_loaded",
    VersionUnavailable: "version_unavailable",
}


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app from the ``GAN_`` environment; ``config`` overrides variables by name."""
    env = dict(os.environ)
    for name, value in (config or {}).items():
        if name not in VARIABLES:
            raise ConfigError(f"unknown setting {name!r}; known: {', '.join(VARIABLES)}")
        env[name] = str(value)
    settings = load_settings(env)  # refuses FLASK_DEBUG too
    check_providers(settings.providers)
    _refuse_debugger()
    configure_logging(settings.log_level)
    tune_malloc()

    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep fields in documented order
    # Sessions are created here, in the worker: onnxruntime thread pools do not survive fork.
    app.extensions["gan"] = State(
        settings=settings,
        registry=Registry(settings, must_load=env.get(REPLACEMENT_WORKER_ENV) != "1"),
        request_schema=generate_request_schema(settings.max_samples),
        query_schema=generate_query_schema(settings.max_samples),
        openapi=add_security(
            build_spec(settings.max_samples, settings.max_body_bytes),
            exempt_paths(settings.auth_exempt),
            auth=bool(settings.api_tokens),
            rate_limit=None if settings.rate_limit is None else str(settings.rate_limit),
        ),
    )
    app.register_blueprint(bp)
    app.register_blueprint(metrics_bp)
    app.register_blueprint(v2_bp)
    app.register_blueprint(interpolate.bp)  # POST /interpolate
    app.register_blueprint(page.bp)  # the web page at /
    _register_error_handlers(app)
    # Auth and the rate limit: one before-request hook when either is on, none otherwise.
    install_guard(app, settings, open_limiter(settings.rate_limit, settings.trusted_proxy_hops, env))
    # One after-request hook for every response: X-Request-ID and X-Worker-Pid, the request's
    # count and duration (hooks cost a few microseconds each, on every request).
    instrument(app, {PID_HEADER: str(os.getpid())})
    # Called by serve.worker.EventWorker about once a second between requests: rescans, and
    # whether the worker is ready (one that is not leaves new connections to the others).
    app.tick = app.extensions["gan"].registry.tick  # type: ignore[attr-defined]
    return app


def _refuse_debugger() -> None:
    """Refuse ``flask run --debugger``: Werkzeug's debugger runs code sent to it."""
    context = click.get_current_context(silent=True)
    if context is not None and context.params.get("debugger"):
        raise ConfigError(
            "flask run --debugger wraps the app in the Werkzeug debugger, which runs code sent "
            "to it; the service never runs with it: drop --debugger"
        )


def configure_logging(level: str) -> None:
    """Log the ``serve`` package to stderr, unless the host process already set up logging."""
    logger = logging.getLogger("serve")
    logger.setLevel(level.upper())
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter(
                "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
                "%Y-%m-%d %H:%M:%S %z",
            )
        )
        logger.addHandler(handler)


def _register_error_handlers(app: Flask) -> None:
    def error(status: int, code: str, message: str) -> Response:
        response = jsonify(error_json(request.path, status, code, message))
        response.status_code = status
        return response

    @app.errorhandler(ApiError)
    def api_error(e: ApiError) -> Response:
        return error(e.status, e.code, e.message)

    @app.errorhandler(RegistryError)
    def registry_error(e: RegistryError) -> Response:
        code = _REGISTRY_CODES[type(e)]
        status = ERROR_CODES[code].status
        assert status is not None
        return error(status, code, e.message)

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> Response:
        status = e.code or 500
        message = str(e.description)
        if status == 413:
            message = f"request body larger than {app.config['MAX_CONTENT_LENGTH']} bytes"
        response = error(status, _HTTP_CODES.get(status, "http_error"), message)
        for key, value in e.get_headers():  # such as Allow on a 405
            if key.lower() != "content-type":
                response.headers[key] = value
        return response

    @app.errorhandler(Exception)
    def internal_error(e: Exception) -> Response:
        log.exception("unhandled error")
        return error(500, "internal_error", "internal server error")
