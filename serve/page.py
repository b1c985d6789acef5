"""The web page at ``/``: one HTML page, its script and its style sheet (serve/static/).

The files are read once when the app is created and served from memory, each with a strong
ETag (revalidated on every load: ``Cache-Control: no-cache``, so a new release shows at once)
and a Content-Security-Policy that lets the page load and call nothing but this service. The
page holds no secrets, so it is open whether or not the API needs a token (serve.auth exempts
:data:`PAGE_PATHS`). This module imports Flask alone: gunicorn's master imports it with
serve.auth.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, request
from flask.blueprints import BlueprintSetupState

STATIC_DIR = Path(__file__).with_name("static")
# Request path -> (file in serve/static/, Content-Type).
FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
PAGE_PATHS = frozenset(FILES)
CACHE_CONTROL = "no-cache"
# Nothing from elsewhere: scripts, styles and API calls from this origin only; images also as
# the data: and blob: URLs the page makes from API responses.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_EXTENSION = "gan.page"

bp = Blueprint("page", __name__)


@dataclass(frozen=True)
class StaticFile:
    """One file of the page, as served."""

    body: bytes
    content_type: str
    etag: str  # unquoted: the first 32 hex digits of the body's sha256


def load_files(directory: Path = STATIC_DIR) -> dict[str, StaticFile]:
    """Read every file of the page; a missing one stops the app from starting."""
    files = {}
    for path, (name, content_type) in FILES.items():
        body = (directory / name).read_bytes()
        files[path] = StaticFile(body, content_type, hashlib.sha256(body).hexdigest()[:32])
    return files


@bp.record_once
def _load(setup: BlueprintSetupState) -> None:
    setup.app.extensions[_EXTENSION] = load_files()


def serve_file(path: str) -> Response:
    """The page's file at request path ``path``, or a 304 when If-None-Match names its ETag."""
    file: StaticFile = current_app.extensions[_EXTENSION][path]
    response = Response(
        file.body,
        content_type=file.content_type,
        headers={
            "Cache-Control": CACHE_CONTROL,
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )
    response.set_etag(file.etag)
    response.make_conditional(request)  # in place: a 304 when If-None-Match matches
    return response


def _view(path: str) -> Callable[[], Response]:
    def view() -> Response:
        return serve_file(path)

    return view


for _path, (_name, _) in FILES.items():
    bp.add_url_rule(_path, endpoint=_name.replace(".", "_"), view_func=_view(_path), methods=["GET"])


def document(spec: dict[str, Any], max_samples: int, max_body_bytes: int) -> None:
    """Add the page's routes to the OpenAPI document ``spec``."""
    del max_samples, max_body_bytes  # the page has no limits of its own
    for path, (name, content_type) in FILES.items():
        media_type = content_type.split(";")[0]
        headers = {
            "ETag": {"description": "Strong entity tag of the file.", "schema": {"type": "string"}},
            "Cache-Control": {"schema": {"type": "string", "enum": [CACHE_CONTROL]}},
        }
        spec["paths"][path] = {
            "get": {
                "summary": "The web page" if path == "/" else f"The web page's {name}",
                "description": "No token needed, even when the API needs one.",
                "responses": {
                    "200": {
                        "description": name,
                        "headers": headers,
                        "content": {media_type: {"schema": {"type": "string"}}},
                    },
                    "304": {
                        "description": "Not Modified: If-None-Match names the file's ETag.",
                        "headers": headers,
                    },
                },
            }
        }
