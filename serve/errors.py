"""The one error type of the HTTP API and its JSON shape."""

from __future__ import annotations

import json
from typing import Any


class ApiError(Exception):
    """An error answered as ``{"error": {"status", "code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        """The JSON body of the response."""
        return error_body(self.status, self.code, self.message)


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    """The JSON body every error response has."""
    return {"error": {"status": status, "code": code, "message": message}}


def is_v2_path(path: str) -> bool:
    """Whether a request path is in the Open Inference Protocol's ``/v2`` tree."""
    return path == "/v2" or path.startswith("/v2/")


def error_json(path: str, status: int, code: str, message: str) -> dict[str, Any]:
    """The error body for a request to ``path``: the protocol's ``{"error": "<message>"}``
    under ``/v2``, the API's shape everywhere else (the app's handlers and the worker's)."""
    return {"error": message} if is_v2_path(path) else error_body(status, code, message)


ECHO_LIMIT = 64  # characters of a client's value an error message repeats


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[:limit] + "…"


def shown(value: object, limit: int = ECHO_LIMIT) -> str:
    """A value a client sent, as an error message repeats it: a string quoted, a number or
    anything else as JSON writes it, cut to ``limit`` characters (a name or a number of any
    length stays short)."""
    if isinstance(value, str):
        return repr(clip(value, limit))
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):  # not JSON, or an int too long for str()
        text = repr(value) if not isinstance(value, int) else "a very large integer"
    return clip(text, limit)
