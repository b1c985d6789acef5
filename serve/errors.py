"""The one error type of the HTTP API, its JSON shape, and the one list of its error codes."""

from __future__ import annotations

import json
from typing import Any, NamedTuple


class ErrorCode(NamedTuple):
    """An error code's HTTP status (None: whatever status it comes with) and its meaning."""

    status: int | None
    meaning: str


# Every code an error response can carry, whoever answers it (the app, the auth and rate-limit
# guard, the worker); docs/serving.md's Errors table documents exactly these.
ERROR_CODES: dict[str, ErrorCode] = {
    "bad_request": ErrorCode(400, "the HTTP request itself is malformed (answered by the worker)"),
    "malformed_json": ErrorCode(400, "the body is not JSON"),
    "invalid_type": ErrorCode(400, "a field has the wrong JSON type"),
    "v2_bad_request": ErrorCode(400, "a /v2 request the protocol does not accept"),
    "missing_token": ErrorCode(401, "no bearer token, and the route needs one"),
    "invalid_token": ErrorCode(401, "a bearer token that is not one of the configured ones"),
    "not_found": ErrorCode(404, "no such route"),
    "unknown_model": ErrorCode(404, "no such model"),
    "unknown_version": ErrorCode(404, "no such version of the model"),
    "version_not_loaded": ErrorCode(
        404, "the version is on disk, outside the version policy, and on-demand loading is off"
    ),
    "method_not_allowed": ErrorCode(405, "the route does not take this method"),
    "request_timeout": ErrorCode(408, "the request did not arrive whole in time"),
    "precondition_failed": ErrorCode(412, "If-None-Match matches the response's ETag"),
    "body_too_large": ErrorCode(413, "the body is larger than GAN_MAX_BODY_BYTES"),
    "uri_too_long": ErrorCode(414, "the request line is too long"),
    "unsupported_media_type": ErrorCode(415, "the body is not Content-Type: application/json"),
    "unsupported_encoding": ErrorCode(415, "a Content-Encoding the service does not decode"),
    "invalid_source": ErrorCode(422, "not exactly one of seeds, seed and noise"),
    "missing_field": ErrorCode(422, "a required field is missing"),
    "unknown_field": ErrorCode(422, "a field the request does not take"),
    "duplicate_field": ErrorCode(422, "a field or parameter given twice"),
    "too_many_samples": ErrorCode(422, "more images than GAN_MAX_SAMPLES"),
    "too_many_items": ErrorCode(422, "a list longer than it may be"),
    "too_few_items": ErrorCode(422, "a list shorter than it must be"),
    "out_of_range": ErrorCode(422, "a number outside its range"),
    "seed_out_of_range": ErrorCode(422, "a seed outside [0, 2**63 - 1]"),
    "invalid_value": ErrorCode(422, "a value that is none of the accepted ones"),
    "invalid_noise_shape": ErrorCode(422, "noise of the wrong shape"),
    "non_finite_noise": ErrorCode(422, "noise with NaN, Infinity or out of float32 range"),
    "labels_required": ErrorCode(422, "a conditional model given noise without labels"),
    "labels_not_supported": ErrorCode(422, "labels given to an unconditional model"),
    "label_out_of_range": ErrorCode(422, "a label outside the model's classes"),
    "invalid_labels_count": ErrorCode(422, "labels neither one nor one per sample"),
    "rate_limited": ErrorCode(429, "over GAN_RATE_LIMIT"),
    "headers_too_large": ErrorCode(431, "too many header fields, or one too long"),
    "internal_error": ErrorCode(500, "a bug in the service"),
    "not_implemented": ErrorCode(501, "a transfer coding other than chunked"),
    "not_ready": ErrorCode(503, "no model is loaded"),
    "version_unavailable": ErrorCode(503, "the version is on disk but fails the service's checks"),
    "timeout": ErrorCode(503, "the request ran past GAN_TIMEOUT and its worker is replaced"),
    "http_error": ErrorCode(None, "any other HTTP error the web framework raises"),
}


def checked_code(status: int, code: str) -> str:
    """``code`` if ERROR_CODES lists it for ``status``; a ValueError (a bug) otherwise."""
    known = ERROR_CODES.get(code)
    if known is None or known.status not in (None, status):
        raise ValueError(f"error code {code!r} with status {status} is not in ERROR_CODES")
    return code


class ApiError(Exception):
    """An error answered as ``{"error": {"status", "code", "message"}}``; ``code`` must be in
    ERROR_CODES with this status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        checked_code(status, code)
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
