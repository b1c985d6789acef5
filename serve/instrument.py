"""Per-request instrumentation: the request id, the route and status for the metrics and the log.

``instrument(app)`` wraps the app's WSGI callable to time each request and count it in
serve.metrics, and adds an after-request hook that sets ``X-Request-ID`` on every response the
app makes (its errors and Flask's own 404/405/413 included). What the access log needs (request
id, model, version, images) goes into the WSGI environ under ``gan.*`` keys, where gunicorn's
logger (serve.accesslog) finds it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from time import perf_counter
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from serve.metrics import UNMATCHED, observe_request

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_MAX = 128
# An incoming X-Request-ID is kept only if it is short and of these characters: it goes into
# log lines and response headers, so anything else (spaces, quotes, CR/LF, ...) is replaced.
_REQUEST_ID_RE = re.compile(rf"[A-Za-z0-9._-]{{1,{REQUEST_ID_MAX}}}\Z")

# WSGI environ keys the app sets for the metrics and the access log.
ENV_REQUEST_ID = "gan.request_id"
ENV_ROUTE = "gan.route"
ENV_STATUS = "gan.status"
ENV_MODEL = "gan.model"
ENV_VERSION = "gan.version"
ENV_IMAGES = "gan.images"


def request_id(incoming: str | None) -> str:
    """The incoming id if it is safe (<= 128 of ``[A-Za-z0-9._-]``), else a new uuid4 hex."""
    if incoming is not None and _REQUEST_ID_RE.match(incoming):
        return incoming
    return uuid.uuid4().hex


class Instrumented:
    """WSGI middleware: a request id for each request, and its count and duration."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]]) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start = perf_counter()
        environ[ENV_REQUEST_ID] = request_id(environ.get("HTTP_X_REQUEST_ID"))
        body = self.wsgi_app(environ, start_response)
        # Flask has built the whole response by now (nothing here streams).
        observe_request(
            environ.get(ENV_ROUTE, UNMATCHED),
            environ["REQUEST_METHOD"],
            environ.get(ENV_STATUS, 500),
            perf_counter() - start,
        )
        return body


def instrument(app: Flask, headers: dict[str, str]) -> None:
    """Count and time every request of ``app``; give each response its X-Request-ID and
    ``headers`` (the same on every response of this process)."""
    app.wsgi_app = Instrumented(app.wsgi_app)  # type: ignore[method-assign]
    fixed = list(headers.items())

    @app.after_request
    def tag_response(response: Response) -> Response:
        environ = request.environ
        rid = environ.get(ENV_REQUEST_ID)
        if rid is None:  # the app called without the middleware (a test's own environ)
            rid = environ[ENV_REQUEST_ID] = request_id(environ.get("HTTP_X_REQUEST_ID"))
        response.headers[REQUEST_ID_HEADER] = rid
        for name, value in fixed:
            response.headers[name] = value
        environ[ENV_STATUS] = response.status_code
        rule = request.url_rule
        environ[ENV_ROUTE] = rule.rule if rule is not None else _route_of_unmatched(app)
        return response


def _route_of_unmatched(app: Flask) -> str:
    """The rule of a 405 (the path matched, the method did not), else ``unmatched``."""
    error = request.routing_exception
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        try:
            adapter = app.url_map.bind_to_environ(request.environ)
            valid = list(error.valid_methods)
            rule, _ = adapter.match(method=valid[0], return_rule=True)
            return rule.rule
        except HTTPException:
            pass
    return UNMATCHED
