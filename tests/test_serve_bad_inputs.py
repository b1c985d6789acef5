"""A catalogue of bad inputs, each sent to real gunicorn over real HTTP.

Every case names the exact status and error code docs/serving.md documents for it, and each
answer must be the documented JSON error (``{"error": {"status", "code", "message"}}``, or the
protocol's ``{"error": "<message>"}`` on ``/v2``) whose message shows nothing of the service's
internals and repeats no client value at length. Malformed HTTP goes over raw sockets; the
rest through requests, except targets requests would rewrite (``../`` segments).
"""

from __future__ import annotations

import codecs
import json
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers.server import ROOT, Server
from helpers.tiny_models import LATENT, write_repository

MAX_SAMPLES = 16
MAX_BODY = 65536
CLIENT_TIMEOUT = 2  # seconds: the 408 case waits this long
LONG = "x" * 10_000  # a client value far longer than any message may repeat
ECHO_LIMIT = 64
ROW = [0.0] * LATENT

# What no error message may show: a traceback, a source line, an exception class, an object
# repr, a path of the machine.
INTERNALS = re.compile(
    r'Traceback|File "|\b[A-Z][A-Za-z]*(?:Error|Exception|Warning)\b|\bErrno\b|object at 0x'
    r"|site-packages|\.py\b|/tmp/|" + re.escape(str(ROOT))
)


@dataclass(frozen=True)
class Reply:
    """A response as it arrived: status, headers (names in lower case), body."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Case:
    """One bad input: how to send it, and the documented answer."""

    name: str
    send: Callable[[Server], Reply]
    status: int
    code: str | None  # None: a /v2 route, whose errors carry a message only
    fragment: str = ""  # a piece the message must hold
    v2: bool = field(default=False)


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def parse(data: bytes) -> Reply:
    """The first response in ``data``."""
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", len(rest)))
    return Reply(status, headers, rest[:length])


def exchange(server: Server, data: bytes, pause: float = 0.0) -> Reply:
    """Send raw bytes on a new connection and read the answer (the server closes after its
    own refusals; otherwise reading stops once the body is in)."""
    with socket.create_connection(address(server), timeout=30) as sock:
        sock.sendall(data)
        if pause:
            time.sleep(pause)  # a client that stops sending: past GAN_CLIENT_TIMEOUT
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
            head, sep, body = received.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
                if len(body) >= length:
                    break
    assert received, "the server closed the connection without an answer"
    return parse(received)


def raw(data: bytes | str, pause: float = 0.0) -> Callable[[Server], Reply]:
    payload = data.encode("latin-1") if isinstance(data, str) else data
    return lambda server: exchange(server, payload, pause)


def request_bytes(
    method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    """A well-framed HTTP/1.1 request with exactly this method and target."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def target(method: str, path: str, body: bytes = b"", **headers: str) -> Callable[[Server], Reply]:
    """A request sent as written, target included (requests would normalise ``../``)."""
    return raw(request_bytes(method, path, body, {k.replace("_", "-"): v for k, v in headers.items()}))


def http(method: str, path: str, **kwargs: Any) -> Callable[[Server], Reply]:
    def send(server: Server) -> Reply:
        response = requests.request(method, f"{server.url}{path}", timeout=30, **kwargs)
        headers = {k.lower(): v for k, v in response.headers.items()}
        return Reply(response.status_code, headers, response.content)

    return send


def body(data: bytes | str | Any, path: str = "/generate", **headers: str) -> Callable[[Server], Reply]:
    """POST ``data`` (bytes as they are, str as UTF-8, anything else as JSON) as JSON."""
    if isinstance(data, str):
        payload = data.encode()
    elif isinstance(data, bytes):
        payload = data
    else:
        payload = json.dumps(data).encode()
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return http("POST", path, data=payload, headers={"Content-Type": "application/json"} | named)


def post(name: str, data: Any, status: int, code: str, fragment: str = "") -> Case:
    return Case(name, body(data), status, code, fragment)


def get(name: str, query: str, status: int, code: str, fragment: str = "") -> Case:
    return Case(name, http("GET", f"/generate?{query}"), status, code, fragment)


def v2(name: str, data: Any, fragment: str = "", status: int = 400, model: str = "tiny",
       **headers: str) -> Case:
    return Case(name, body(data, f"/v2/models/{model}/infer", **headers), status, None, fragment,
                v2=True)


def z(n: int = 1, width: int = LATENT, **extra: Any) -> dict[str, Any]:
    return {"name": "z", "datatype": "FP32", "shape": [n, width], "data": [0.5] * (n * width)} | extra


def labels(values: list[Any], **extra: Any) -> dict[str, Any]:
    return {"name": "labels", "datatype": "INT64", "shape": [len(values)], "data": values} | extra


def fill(template: str, value: str) -> str:
    """``template`` with each ``@`` replaced by ``value``."""
    return template.replace("@", value)


def nested(depth: int, inner: str = "0") -> str:
    return "[" * depth + inner + "]" * depth


BIG = "1" + "0" * 5000  # an integer literal past Python's 4,300-digit conversion limit
COND = {"model": "cond"}

CASES = [
    # --- Bodies that are not JSON, or not UTF-8 ------------------------------------------
    post("truncated", '{"seed": 1', 400, "malformed_json", "line 1, column 11"),
    post("trailing garbage", '{"seed": 1} x', 400, "malformed_json", "Extra data"),
    post("two objects", '{"seed": 1}{"seed": 2}', 400, "malformed_json", "not valid JSON"),
    post("empty body", "", 400, "malformed_json", "not valid JSON"),
    post("only whitespace", " \r\n\t", 400, "malformed_json", "not valid JSON"),
    post("single quotes", "{'seed': 1}", 400, "malformed_json", "not valid JSON"),
    post("trailing comma", '{"seed": 1,}', 400, "malformed_json", "not valid JSON"),
    post("a comment", '{"seed": 1 /* one */}', 400, "malformed_json", "not valid JSON"),
    post("unquoted key", "{seed: 1}", 400, "malformed_json", "not valid JSON"),
    post("raw newline in a string", '{"model": "a\nb", "seed": 1}', 400, "malformed_json",
         "control character"),
    post("bad escape", r'{"model": "\x41", "seed": 1}', 400, "malformed_json", "escape"),
    post("UTF-16 LE with BOM", codecs.BOM_UTF16_LE + '{"seed": 1}'.encode("utf-16-le"), 400,
         "malformed_json", "not UTF-8"),
    post("UTF-16 BE with BOM", codecs.BOM_UTF16_BE + '{"seed": 1}'.encode("utf-16-be"), 400,
         "malformed_json", "not UTF-8"),
    post("UTF-16 without BOM", '{"seed": 1}'.encode("utf-16-le"), 400, "malformed_json",
         "not valid JSON"),
    post("UTF-32", '{"seed": 1}'.encode("utf-32"), 400, "malformed_json", "not UTF-8"),
    post("invalid UTF-8 byte", b'{"model": "\xff", "seed": 1}', 400, "malformed_json",
         "not UTF-8"),
    post("overlong UTF-8", b'{"model": "\xc0\xaf", "seed": 1}', 400, "malformed_json",
         "not UTF-8"),
    post("UTF-8 encoded surrogate", b'{"model": "\xed\xa0\x80", "seed": 1}', 400,
         "malformed_json", "not UTF-8"),
    post("Latin-1 body", '{"model": "caf\xe9", "seed": 1}'.encode("latin-1"), 400,
         "malformed_json", "not UTF-8"),
    post("lone surrogate escape", r'{"model": "\ud800", "seed": 1}', 404, "unknown_model",
         "unknown model"),
    post("NUL escape in a name", r'{"model": "tiny\u0000", "seed": 1}', 404, "unknown_model",
         "unknown model"),
    post("NaN seed", '{"seed": NaN}', 400, "invalid_type", "seed must be an integer"),
    post("Infinity seed", '{"seed": Infinity}', 422, "seed_out_of_range", "<= 9223372036854775807"),
    post("-Infinity seed", '{"seed": -Infinity}', 422, "seed_out_of_range", ">= 0"),
    post("NaN in noise", '{"noise": [[NaN, 0, 0, 0, 0, 0, 0, 0]]}', 422, "non_finite_noise"),
    post("Infinity in noise", '{"noise": [[0, 0, 0, Infinity, 0, 0, 0, 0]]}', 422,
         "non_finite_noise"),
    post("duplicate keys", '{"seed": 1, "seed": 2}', 422, "duplicate_field", "'seed'"),
    post("duplicate keys nested", '{"seed": 1, "x": {"a": 1, "a": 2}}', 422, "duplicate_field"),
    post("duplicate long key", fill('{"seed": 1, "@": 1, "@": 2}', LONG), 422,
         "duplicate_field", "…"),
    post("deeply nested arrays", nested(30_000), 400, "malformed_json", "too deeply"),
    post("deeply nested objects", '{"a": ' * 8_000 + "1" + "}" * 8_000, 400, "malformed_json",
         "too deeply"),
    post("deep nesting inside a field", fill('{"seed": 1, "labels": @}', nested(20_000)), 400,
         "malformed_json", "too deeply"),
    post("nesting in noise", fill('{"noise": [@]}', nested(500)), 400, "invalid_type",
         "noise[0][0] must be a number"),
    post("body is an array", "[1, 2]", 400, "invalid_type", "request body must be an object"),
    post("body is null", "null", 400, "invalid_type", "must be an object"),
    post("body is a string", '"seed"', 400, "invalid_type", "must be an object"),
    post("body is a number", "42", 400, "invalid_type", "must be an object"),
    # --- Huge numbers ------------------------------------------------------------------------
    post("seed 1e400", '{"seed": 1e400}', 422, "seed_out_of_range"),
    post("seed of 5001 digits", fill('{"seed": @}', BIG), 422, "seed_out_of_range"),
    post("seed of -5001 digits", fill('{"seed": -@}', BIG), 422, "seed_out_of_range", ">= 0"),
    post("seeds of 5001 digits", fill('{"seeds": [1, @]}', BIG), 422, "seed_out_of_range",
         "seeds[1]"),
    post("n of 5001 digits", fill('{"seed": 1, "n": @}', BIG), 422, "too_many_samples"),
    post("version of 5001 digits", fill('{"seed": 1, "version": @}', BIG), 422, "out_of_range"),
    post("labels of 5001 digits", fill('{"model": "cond", "seed": 1, "labels": @}', BIG), 422,
         "label_out_of_range"),
    post("label of 4000 digits", fill('{"model": "cond", "seed": 1, "labels": 1@}', "0" * 4000),
         422, "label_out_of_range"),
    post("noise of 5001 digits", fill('{"noise": [[@, 0, 0, 0, 0, 0, 0, 0]]}', BIG), 422,
         "non_finite_noise"),
    post("noise 1e400", '{"noise": [[1e400, 0, 0, 0, 0, 0, 0, 0]]}', 422, "non_finite_noise"),
    post("noise beyond float32", {"noise": [[1e39] + ROW[1:]]}, 422, "non_finite_noise"),
    post("huge number in an unknown field", fill('{"seed": 1, "x": @}', BIG), 422, "unknown_field"),
    post("seed with 20000 fraction digits", fill('{"seed": 0.5@1}', "0" * 20_000), 400,
         "invalid_type"),
    # --- Seeds and n -------------------------------------------------------------------------
    post("negative seed", {"seed": -1}, 422, "seed_out_of_range", ">= 0"),
    post("float seed", {"seed": 1.5}, 400, "invalid_type", "seed must be an integer, got number"),
    post("bool seed", {"seed": True}, 400, "invalid_type", "got boolean"),
    post("string seed", {"seed": "1"}, 400, "invalid_type", "got string"),
    post("null seed", {"seed": None}, 400, "invalid_type", "got null"),
    post("array seed", {"seed": [1]}, 400, "invalid_type", "got array"),
    post("object seed", {"seed": {}}, 400, "invalid_type", "got object"),
    post("seed 2**63", {"seed": 2**63}, 422, "seed_out_of_range", "<= 9223372036854775807"),
    post("seed + n past 2**63 - 1", {"seed": 2**63 - 1, "n": 2}, 422, "seed_out_of_range",
         "seed + n - 1"),
    post("empty seeds", {"seeds": []}, 422, "too_few_items", "at least 1 item"),
    post("a negative seed in seeds", {"seeds": [1, -1]}, 422, "seed_out_of_range", "seeds[1]"),
    post("a string in seeds", {"seeds": [1, "2"]}, 400, "invalid_type", "seeds[1]"),
    post("nested seeds", {"seeds": [[1]]}, 400, "invalid_type", "seeds[0]"),
    post("seeds not an array", {"seeds": 1}, 400, "invalid_type", "seeds must be an array"),
    post("too many seeds", {"seeds": list(range(MAX_SAMPLES + 1))}, 422, "too_many_samples"),
    post("n zero", {"seed": 1, "n": 0}, 422, "out_of_range", "n must be >= 1"),
    post("n negative", {"seed": 1, "n": -1}, 422, "out_of_range"),
    post("n too large", {"seed": 1, "n": MAX_SAMPLES + 1}, 422, "too_many_samples"),
    post("n float", {"seed": 1, "n": 1.5}, 400, "invalid_type"),
    post("n without seed", {"n": 2}, 422, "missing_field", "'n' needs field 'seed'"),
    post("seed and seeds", {"seed": 1, "seeds": [1]}, 422, "invalid_source"),
    post("seed and noise", {"seed": 1, "noise": [ROW]}, 422, "invalid_source"),
    post("no source", {}, 422, "invalid_source", "exactly one of"),
    # --- Noise -------------------------------------------------------------------------------
    post("empty noise", {"noise": []}, 422, "too_few_items"),
    post("empty noise row", {"noise": [[]]}, 422, "invalid_noise_shape"),
    post("short noise row", {"noise": [ROW[1:]]}, 422, "invalid_noise_shape", f"[n, {LATENT}]"),
    post("long noise row", {"noise": [[*ROW, 0.0]]}, 422, "invalid_noise_shape", f"[n, {LATENT}]"),
    post("ragged noise", {"noise": [ROW, ROW[1:]]}, 422, "invalid_noise_shape", "unequal"),
    post("flat noise", {"noise": ROW}, 400, "invalid_type", "noise[0] must be an array"),
    post("too many noise rows", {"noise": [ROW] * (MAX_SAMPLES + 1)}, 422, "too_many_samples"),
    post("string in noise", {"noise": [["x", *ROW[1:]]]}, 400, "invalid_type", "noise[0][0]"),
    post("null in noise", {"noise": [[None] * LATENT]}, 400, "invalid_type", "got null"),
    post("bool in noise", {"noise": [[*ROW[1:], True]]}, 400, "invalid_type", "got boolean"),
    post("noise a string", {"noise": "abc"}, 400, "invalid_type"),
    post("noise without labels, conditional", COND | {"noise": [ROW]}, 422, "labels_required"),
    # --- Labels ------------------------------------------------------------------------------
    post("labels, unconditional model", {"seed": 1, "labels": 0}, 422, "labels_not_supported"),
    post("label past the classes", COND | {"seed": 1, "labels": 3}, 422, "label_out_of_range",
         "[0, 3)"),
    post("negative label", COND | {"seed": 1, "labels": -1}, 422, "label_out_of_range"),
    post("float label", COND | {"seed": 1, "labels": 1.5}, 400, "invalid_type"),
    post("string label", COND | {"seed": 1, "labels": "a"}, 400, "invalid_type"),
    post("bool label", COND | {"seed": 1, "labels": True}, 400, "invalid_type"),
    post("string in labels", COND | {"seed": 1, "n": 2, "labels": [0, "a"]}, 400, "invalid_type",
         "labels[1]"),
    post("nested labels", COND | {"seed": 1, "labels": [[0]]}, 400, "invalid_type"),
    post("labels count", COND | {"seed": 1, "n": 2, "labels": [0]}, 422, "invalid_labels_count"),
    post("empty labels", COND | {"seed": 1, "labels": []}, 422, "too_few_items"),
    post("too many labels", COND | {"seed": 1, "labels": [0] * (MAX_SAMPLES + 1)}, 422,
         "too_many_samples"),
    post("label 2**63", COND | {"seed": 1, "labels": 2**63}, 422, "label_out_of_range"),
    # --- Other fields ------------------------------------------------------------------------
    post("unknown field", {"seed": 1, "colour": "red"}, 422, "unknown_field", "'colour'"),
    post("unknown field, long name", {"seed": 1, LONG: 1}, 422, "unknown_field", "…"),
    post("unknown format", {"seed": 1, "format": "gif"}, 422, "invalid_value", "format"),
    post("format a number", {"seed": 1, "format": 1}, 400, "invalid_type"),
    post("model a number", {"seed": 1, "model": 3}, 400, "invalid_type", "model must be a string"),
    post("model null", {"seed": 1, "model": None}, 400, "invalid_type"),
    post("empty model name", {"seed": 1, "model": ""}, 404, "unknown_model"),
    post("unknown model, long name", {"seed": 1, "model": LONG}, 404, "unknown_model", "…"),
    post("version zero", {"seed": 1, "version": 0}, 422, "out_of_range", "version must be >= 1"),
    post("version negative", {"seed": 1, "version": -1}, 422, "out_of_range"),
    post("unknown version", {"seed": 1, "version": 9}, 404, "unknown_version", "no version 9"),
    post("version a string", {"seed": 1, "version": "2"}, 400, "invalid_type"),
    post("version a float", {"seed": 1, "version": 2.5}, 400, "invalid_type"),
    post("version 2**63", {"seed": 1, "version": 2**63}, 422, "out_of_range"),
    # --- Traversal in names and versions -------------------------------------------------------
    post("model ../tiny", {"seed": 1, "model": "../tiny"}, 404, "unknown_model"),
    post("model ../../etc/passwd", {"seed": 1, "model": "../../etc/passwd"}, 404, "unknown_model"),
    post("model an absolute path", {"seed": 1, "model": "/etc/passwd"}, 404, "unknown_model"),
    post("model tiny/../tiny", {"seed": 1, "model": "tiny/../tiny"}, 404, "unknown_model"),
    post("model %2e%2e%2f", {"seed": 1, "model": "%2e%2e%2ftiny"}, 404, "unknown_model"),
    post("model with a NUL", {"seed": 1, "model": "tiny\x00/../cond"}, 404, "unknown_model"),
    Case("/models/../../etc/passwd", target("GET", "/models/../../etc/passwd"), 404, "not_found"),
    Case("/models/..%2f..%2fetc%2fpasswd", http("GET", "/models/..%2f..%2fetc%2fpasswd"), 404,
         "not_found"),
    Case("/models/%2e%2e", http("GET", "/models/%2e%2e"), 404, "unknown_model"),
    Case("/models/%2Fetc%2Fpasswd", http("GET", "/models/%2Fetc%2Fpasswd"), 404, "not_found"),
    Case("/models/tiny%00", http("GET", "/models/tiny%00"), 404, "unknown_model"),
    Case("/models/ long name", http("GET", f"/models/{'y' * 3000}"), 404, "unknown_model", "…"),
    Case("/models/ %ff%fe", http("GET", "/models/%ff%fe"), 404, "unknown_model"),
    get("query model ../tiny", "seed=1&model=../tiny", 404, "unknown_model"),
    get("query model %2e%2e%2f", "seed=1&model=%2e%2e%2fcond", 404, "unknown_model"),
    get("query model /etc/passwd", "seed=1&model=%2Fetc%2Fpasswd", 404, "unknown_model"),
    get("query model NUL", "seed=1&model=tiny%00", 404, "unknown_model"),
    get("query version ../1", "seed=1&version=../1", 400, "invalid_type"),
    get("query version NUL", "seed=1&version=1%00", 400, "invalid_type"),
    Case("v2 model ..%2ftiny", http("GET", "/v2/models/..%2ftiny/ready"), 404, None, v2=True),
    Case("v2 model ../tiny", target("GET", "/v2/models/../v2/models/tiny/x"), 404, None, v2=True),
    Case("v2 model NUL", http("GET", "/v2/models/%00/ready"), 404, None, "unknown model", v2=True),
    Case("v2 version NUL", http("GET", "/v2/models/tiny/versions/1%00"), 404, None, "no version",
         v2=True),
    Case("v2 version ..%2f1", http("GET", "/v2/models/tiny/versions/..%2f1/ready"), 404, None,
         v2=True),
    Case("v2 version -1", http("GET", "/v2/models/tiny/versions/-1/ready"), 404, None,
         "no version", v2=True),
    Case("v2 version 01", http("GET", "/v2/models/tiny/versions/01/ready"), 404, None,
         "no version", v2=True),
    Case("v2 version of 30 digits", http("GET", f"/v2/models/tiny/versions/{'9' * 30}/ready"),
         404, None, "no version", v2=True),
    Case("v2 long model name", http("GET", f"/v2/models/{'y' * 3000}/ready"), 404, None, "…",
         v2=True),
    # --- Content types -----------------------------------------------------------------------
    Case("no Content-Type", http("POST", "/generate", data=b'{"seed": 1}'), 415,
         "unsupported_media_type", "none"),
    Case("text/plain", body('{"seed": 1}', Content_Type="text/plain"), 415,
         "unsupported_media_type", "'text/plain'"),
    Case("form", http("POST", "/generate", data={"seed": "1"}), 415, "unsupported_media_type"),
    Case("multipart", http("POST", "/generate", files={"seed": b"1"}), 415,
         "unsupported_media_type"),
    Case("long Content-Type", body('{"seed": 1}', Content_Type="application/" + "x" * 4000), 415,
         "unsupported_media_type", "…"),
    Case("UTF-16 body, charset=utf-16", body('{"seed": 1}'.encode("utf-16"),
         Content_Type="application/json; charset=utf-16"), 400, "malformed_json", "not UTF-8"),
    Case("gzip body", body(b"\x1f\x8b\x08\x00" + b"\x00" * 16, Content_Encoding="gzip"), 400,
         "malformed_json", "not UTF-8"),
    # --- Methods -----------------------------------------------------------------------------
    Case("PUT /generate", http("PUT", "/generate", json={"seed": 1}), 405, "method_not_allowed"),
    Case("DELETE /generate", http("DELETE", "/generate"), 405, "method_not_allowed"),
    Case("PATCH /models", http("PATCH", "/models"), 405, "method_not_allowed"),
    Case("TRACE /healthz", http("TRACE", "/healthz"), 405, "method_not_allowed"),
    Case("POST /healthz", http("POST", "/healthz"), 405, "method_not_allowed"),
    Case("made-up method", target("FROB", "/healthz"), 405, "method_not_allowed"),
    Case("CONNECT to an authority", raw("CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: x\r\n\r\n"), 404,
         "not_found"),
    Case("OPTIONS *", raw("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"), 404, "not_found"),
    Case("lower-case method", raw("get /healthz HTTP/1.1\r\nHost: x\r\n\r\n"), 400, "bad_request"),
    Case("method with a symbol", raw("G@T /healthz HTTP/1.1\r\nHost: x\r\n\r\n"), 400,
         "bad_request"),
    Case("POST /v2", http("POST", "/v2"), 405, None, v2=True),
    Case("GET on v2 infer", http("GET", "/v2/models/tiny/infer"), 405, None, v2=True),
    Case("DELETE v2 model", http("DELETE", "/v2/models/tiny"), 405, None, v2=True),
    # --- Malformed HTTP ----------------------------------------------------------------------
    Case("garbage request line", raw("HELLO\r\n\r\n"), 400, "bad_request"),
    Case("no HTTP version", raw("GET /healthz\r\nHost: x\r\n\r\n"), 400, "bad_request"),
    Case("HTTP/0.9", raw("GET /healthz HTTP/0.9\r\nHost: x\r\n\r\n"), 400, "bad_request"),
    Case("two Host headers", raw("GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400,
         "bad_request"),
    Case("non-ASCII request line", raw("GET /healthz?" + "\xff" * 3000 + " HTTP/1.1\r\nHost: x\r\n\r\n"),
         400, "bad_request", "…"),
    Case("HTTP/2.0 request line", raw("GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n"), 400,
         "bad_request"),
    Case("HTTP/1.1x", raw("GET /healthz HTTP/1.1x\r\nHost: x\r\n\r\n"), 400, "bad_request"),
    Case("space in the target", raw("GET /health z HTTP/1.1\r\nHost: x\r\n\r\n"), 400,
         "bad_request"),
    Case("NUL in the target", raw(b"GET /he\x00althz HTTP/1.1\r\nHost: x\r\n\r\n"), 400,
         "bad_request"),
    Case("target without a slash", raw("GET healthz HTTP/1.1\r\nHost: x\r\n\r\n"), 400,
         "bad_request"),
    Case("huge header", raw(f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 9000}\r\n\r\n"),
         431, "headers_too_large"),
    Case("many headers", raw("GET /healthz HTTP/1.1\r\nHost: x\r\n"
         + "".join(f"X-H{i}: {i}\r\n" for i in range(150)) + "\r\n"), 431, "headers_too_large"),
    Case("conflicting Content-Length", raw(
        "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        'Content-Length: 11\r\nContent-Length: 12\r\n\r\n{"seed": 1} '), 400, "bad_request"),
    Case("Content-Length and Transfer-Encoding", raw(
        "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        'Content-Length: 11\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n{"seed": 1}\r\n0\r\n\r\n'),
        400, "bad_request"),
    Case("Transfer-Encoding gzip alone", raw(
        "POST /generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"), 400,
        "bad_request"),
    Case("Transfer-Encoding made up", raw(
        "POST /generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: frobnicate\r\n\r\n"), 501,
        "not_implemented"),
    Case("Transfer-Encoding chunked twice", raw(
        "POST /generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"
        "0\r\n\r\n"), 400, "bad_request"),
    Case("Transfer-Encoding gzip, chunked", raw(
        "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        'Transfer-Encoding: gzip, chunked\r\n\r\nb\r\n{"seed": 1}\r\n0\r\n\r\n'), 501,
        "not_implemented", "chunked"),
    Case("Transfer-Encoding chunked with a parameter", raw(
        "POST /generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked;x=1\r\n\r\n"
        "0\r\n\r\n"), 501, "not_implemented"),
    Case("bad chunk size", raw(
        "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"), 400, "bad_request"),
    Case("chunk missing its CRLF", raw(
        "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        'Transfer-Encoding: chunked\r\n\r\n3\r\n{"sXX\r\n0\r\n\r\n'), 400, "bad_request"),
    Case("chunked body too large", raw(
        "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: chunked\r\n\r\n{MAX_BODY + 1:x}\r\n"), 413, "body_too_large"),
    Case("Content-Length not a number", raw(
        "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"), 400, "bad_request"),
    Case("negative Content-Length", raw(
        "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"), 400, "bad_request"),
    Case("Content-Length past the limit", raw(
        f"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n"), 413,
        "body_too_large"),
    Case("Expect: 100-continue past the limit", raw(
        f"POST /generate HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        f"Content-Length: {10 * MAX_BODY}\r\n\r\n"), 413, "body_too_large"),
    Case("v2 body past the limit", raw(
        f"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}"
        "\r\n\r\n"), 413, None, v2=True),
    Case("header without a colon", raw("GET /healthz HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n"),
         400, "bad_request"),
    Case("space in a header name", raw("GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n"),
         400, "bad_request"),
    Case("non-ASCII header name", raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-\xc3\xa9: 1\r\n\r\n"),
         400, "bad_request"),
    Case("NUL in a header value", raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n"),
         400, "bad_request"),
    Case("obsolete line folding", raw("GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"),
         400, "bad_request"),
    Case("request line past 8,190 bytes", raw(f"GET /generate?seed=1&m={'a' * 9000} HTTP/1.1"
         "\r\nHost: x\r\n\r\n"), 414, "uri_too_long"),
    Case("request line past 8,190 bytes, v2", raw(f"GET /v2/models/{'a' * 9000} HTTP/1.1\r\n"
         "Host: x\r\n\r\n"), 414, None, v2=True),
    Case("request that never ends", raw(
        "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        'Content-Length: 50\r\n\r\n{"seed"', pause=CLIENT_TIMEOUT + 1.5), 408, "request_timeout"),
    # --- The query of GET /generate ----------------------------------------------------------
    get("query no seed", "", 422, "missing_field", "missing field 'seed'"),
    get("query seed not a number", "seed=abc", 400, "invalid_type", "got string"),
    get("query seed a fraction", "seed=1.5", 400, "invalid_type", "got number"),
    get("query seed negative", "seed=-1", 422, "seed_out_of_range"),
    get("query seed 1e400", "seed=1e400", 422, "seed_out_of_range"),
    get("query seed of 2001 digits", f"seed=1{'0' * 2000}", 422, "seed_out_of_range"),
    get("query seed empty", "seed=", 400, "invalid_type"),
    get("query seed twice", "seed=1&seed=2", 422, "duplicate_field", "'seed'"),
    get("query seed + n past 2**63 - 1", "seed=9223372036854775807&n=2", 422, "seed_out_of_range",
        "seed + n - 1"),
    get("query n zero", "seed=1&n=0", 422, "out_of_range"),
    get("query n too large", f"seed=1&n={MAX_SAMPLES + 1}", 422, "too_many_samples"),
    get("query n not a number", "seed=1&n=abc", 400, "invalid_type"),
    get("query unknown parameter", "seed=1&foo=bar", 422, "unknown_field", "'foo'"),
    get("query format is POST only", "seed=1&format=png", 422, "unknown_field", "'format'"),
    get("query unknown parameter, long name", f"seed=1&{'q' * 3000}=1", 422, "unknown_field", "…"),
    get("query NUL parameter name", "seed=1&%00=1", 422, "unknown_field"),
    get("query invalid UTF-8 in a value", "seed=%ff%fe", 400, "invalid_type"),
    get("query semicolon separator", "seed=1;n=2", 400, "invalid_type"),
    get("query labels, unconditional model", "seed=1&labels=1", 422, "labels_not_supported"),
    get("query a bad label in a list", "seed=1&model=cond&n=2&labels=1,x", 400, "invalid_type",
        "labels[1]"),
    get("query label past the classes", "seed=1&model=cond&labels=9", 422, "label_out_of_range"),
    get("query labels count", "seed=1&model=cond&n=2&labels=1,2,0", 422, "invalid_labels_count"),
    get("query unknown model, long name", f"seed=1&model={'m' * 3000}", 404, "unknown_model", "…"),
    get("query unknown version", "seed=1&version=9", 404, "unknown_version"),
    # --- The Open Inference Protocol's infer -------------------------------------------------
    v2("v2 not JSON", "{inputs", "not valid JSON"),
    v2("v2 not UTF-8", b'{"inputs": [], "id": "\xff"}', "not UTF-8"),
    v2("v2 deeply nested", nested(30_000), "too deeply"),
    v2("v2 a JSON array", [1], "must be a JSON object"),
    v2("v2 no inputs", {}, "inputs must be a non-empty array"),
    v2("v2 empty inputs", {"inputs": []}, "inputs must be a non-empty array"),
    v2("v2 input not an object", {"inputs": [1]}, "inputs[0]"),
    v2("v2 datatype FP16", {"inputs": [z(datatype="FP16")]}, "datatype FP32"),
    v2("v2 datatype INT64 for z", {"inputs": [z(datatype="INT64")]}, "datatype FP32"),
    v2("v2 shape of the wrong width", {"inputs": [z(width=LATENT - 1)]}, f"[n, {LATENT}]"),
    v2("v2 shape [0, d]", {"inputs": [z(shape=[0, LATENT], data=[])]}, "1 <= n"),
    v2("v2 shape too many samples", {"inputs": [z(MAX_SAMPLES + 1)]}, "too many samples"),
    v2("v2 shape with -1", {"inputs": [z(shape=[-1, LATENT])]}, "non-negative integers"),
    v2("v2 shape with a fraction", {"inputs": [z(shape=[1.5, LATENT])]}, "non-negative integers"),
    v2("v2 shape empty", {"inputs": [z(shape=[])]}, "non-empty array"),
    v2("v2 shape a string", {"inputs": [z(shape="1,8")]}, "shape"),
    v2("v2 data shorter than the shape", {"inputs": [z(data=[0.5] * (LATENT - 1))]},
       "data has shape"),
    v2("v2 data ragged", {"inputs": [z(2, data=[[0.5] * LATENT, [0.5]])]}, "flat or nested"),
    v2("v2 data strings", {"inputs": [z(data=["a"] * LATENT)]}, "must be numbers"),
    v2("v2 data not an array", {"inputs": [z(data=1.5)]}, "data must be an array"),
    v2("v2 data deeply nested", {"inputs": [z(data=json.loads(nested(200)))]}, "shape"),
    v2("v2 data of 5001 digits", fill('{"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 8], '
       '"data": [@, 0, 0, 0, 0, 0, 0, 0]}]}', BIG), "finite"),
    v2("v2 NaN in z", '{"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 8], '
       '"data": [NaN, 0, 0, 0, 0, 0, 0, 0]}]}', "finite"),
    v2("v2 Infinity in z", '{"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 8], '
       '"data": [Infinity, 0, 0, 0, 0, 0, 0, 0]}]}', "finite"),
    v2("v2 both data and binary_data_size", {"inputs": [z(parameters={"binary_data_size": 32})]},
       "both data and binary_data_size"),
    v2("v2 neither data nor binary", {"inputs": [{k: v for k, v in z().items() if k != "data"}]},
       "neither data"),
    v2("v2 labels for an unconditional model", {"inputs": [z(), labels([0])]}, "no input 'labels'"),
    v2("v2 no labels for a conditional model", {"inputs": [z()]}, "give input 'labels'",
       model="cond"),
    v2("v2 label past the classes", {"inputs": [z(), labels([3])]}, "[0, 3)", model="cond"),
    v2("v2 negative label", {"inputs": [z(), labels([-1])]}, "[0, 3)", model="cond"),
    v2("v2 labels n and z n differ", {"inputs": [z(), labels([0, 1])]}, "same n", model="cond"),
    v2("v2 labels with a fraction", {"inputs": [z(), labels([0.5])]}, "integers", model="cond"),
    v2("v2 labels shape [n, 2]", {"inputs": [z(), labels([0, 1], shape=[1, 2])]}, "[n, 1]",
       model="cond"),
    v2("v2 unknown input", {"inputs": [z(name="x")]}, "no input 'x'"),
    v2("v2 unknown input, long name", {"inputs": [z(name=LONG)]}, "…"),
    v2("v2 z twice", {"inputs": [z(), z()]}, "more than once"),
    v2("v2 id not a string", {"id": 1, "inputs": [z()]}, "id must be a string"),
    v2("v2 unknown output", {"inputs": [z()], "outputs": [{"name": "foo"}]}, "unknown output"),
    v2("v2 output twice", {"inputs": [z()], "outputs": [{"name": "images"}] * 2}, "more than once"),
    v2("v2 classification", {"inputs": [z()], "outputs": [
        {"name": "images", "parameters": {"classification": 3}}]}, "classification"),
    v2("v2 shared memory", {"inputs": [z(parameters={"shared_memory_region": "r"})]},
       "shared memory"),
    v2("v2 binary_data_output not a bool", {"inputs": [z()], "parameters": {
        "binary_data_output": "yes"}}, "true or false"),
    v2("v2 Content-Encoding gzip", {"inputs": [z()]}, "Content-Encoding", status=415,
       Content_Encoding="gzip"),
    v2("v2 unknown model", {"inputs": [z()]}, "unknown model", status=404, model="nope"),
    v2("v2 unknown version", {"inputs": [z()]}, "no version 9", status=404,
       model="tiny/versions/9"),
    v2("v2 header length not a number", {"inputs": [z()]}, "non-negative integer",
       Inference_Header_Content_Length="abc"),
    v2("v2 header length negative", {"inputs": [z()]}, "non-negative integer",
       Inference_Header_Content_Length="-1"),
    v2("v2 header length past the body", {"inputs": [z()]}, "has only",
       Inference_Header_Content_Length="99999"),
    v2("v2 header length of 30 digits", {"inputs": [z()]}, "non-negative integer",
       Inference_Header_Content_Length="9" * 30),
]


def binary_case(name: str, size: int, sent: int, fragment: str) -> Case:
    """A v2 infer with one binary input of ``size`` bytes declared and ``sent`` sent."""
    header = json.dumps({"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, LATENT],
                                     "parameters": {"binary_data_size": size}}]}).encode()
    send = http("POST", "/v2/models/tiny/infer", data=header + b"\x00" * sent, headers={
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream"})
    return Case(name, send, 400, None, fragment, v2=True)


CASES += [
    binary_case("binary size not the shape's", 4 * LATENT - 4, 4 * LATENT - 4, "takes 32 bytes"),
    binary_case("binary bytes left over", 4 * LATENT, 4 * LATENT + 4, "belong to no input"),
    binary_case("binary bytes missing", 4 * LATENT, 8, "run past the end"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, gunicorn: Callable[..., Server]) -> Server:
    """The tiny models (tiny 1 and 2; cond, three classes), two workers."""
    repo = write_repository(tmp_path_factory.mktemp("bad-inputs") / "models")
    return gunicorn(
        GAN_MODELS_DIR=str(repo), GAN_WORKERS="2", GAN_DEFAULT_MODEL="tiny",
        GAN_MAX_SAMPLES=str(MAX_SAMPLES), GAN_MAX_BODY_BYTES=str(MAX_BODY),
        GAN_CLIENT_TIMEOUT=str(CLIENT_TIMEOUT), GAN_RELOAD_INTERVAL="0",
    )


def worker_pids(server: Server) -> set[int]:
    """The pids of the gunicorn master's children (its workers), from /proc."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while being read
        if int(fields[1]) == server.process.pid:
            pids.add(int(stat.parent.name))
    return pids


@pytest.fixture(scope="module")
def workers(server: Server) -> set[int]:
    """The worker pids before the first case: none may be replaced (a crash) by the end."""
    # /readyz answered from one worker; gunicorn forks the next a moment later.
    deadline = time.monotonic() + 30
    pids = worker_pids(server)
    while len(pids) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # polling interval while the master forks
        pids = worker_pids(server)
    assert len(pids) == 2, pids
    return pids


def assert_clean(message: str, server: Server) -> None:
    """A message for people: nothing internal, no client value repeated at length."""
    found = INTERNALS.search(message)
    assert found is None, f"the message shows internals ({found.group(0)!r}): {message}"
    assert str(server.log_path.parent) not in message
    assert len(message) < 400, f"a message of {len(message)} characters: {message[:200]}..."


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_gets_its_documented_error(server: Server, workers: set[int], case: Case) -> None:
    reply = case.send(server)
    assert reply.status == case.status, reply.body[:500]
    assert reply.headers.get("content-type", "").split(";")[0] == "application/json", reply.headers
    assert "x-request-id" in reply.headers
    error = json.loads(reply.body)
    assert list(error) == ["error"], error
    if case.v2:
        assert isinstance(error["error"], str), error
        message = error["error"]
    else:
        assert isinstance(error["error"], dict) and list(error["error"]) == [
            "status", "code", "message"], error
        assert error["error"]["status"] == case.status
        assert error["error"]["code"] == case.code, error
        message = error["error"]["message"]
    assert isinstance(message, str) and message
    assert case.fragment in message, message
    assert_clean(message, server)
    if case.status == 405:
        assert reply.headers.get("allow"), reply.headers


def test_catalogue_is_large() -> None:
    assert len(CASES) >= 100
    assert len({case.name for case in CASES}) == len(CASES)


# --- Edge inputs that the document allows, so the server accepts ------------------------------


def generate(server: Server, payload: Any) -> requests.Response:
    return requests.post(f"{server.url}/generate", json=payload, timeout=30)


@pytest.mark.parametrize(
    ("allowed", "same_as"),
    [
        ({"seed": 0.0}, {"seed": 0}),
        ({"seeds": [1.0, 2e0]}, {"seeds": [1, 2]}),
        ({"seed": 1, "n": 2.0}, {"seed": 1, "n": 2}),
        ({"seed": 1, "version": 1.0}, {"seed": 1, "version": 1}),
        ({"model": "cond", "seed": 1, "labels": 2.0}, {"model": "cond", "seed": 1, "labels": 2}),
        ({"model": "cond", "seed": 1, "n": 2, "labels": [0.0, 1e0]},
         {"model": "cond", "seed": 1, "n": 2, "labels": [0, 1]}),
        ({"noise": [[0, 1, 2, 3, 4, 5, 6, 7]]}, {"noise": [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]}),
    ],
)
def test_integers_written_as_numbers_are_integers(
    server: Server, workers: set[int], allowed: dict, same_as: dict
) -> None:
    first, second = generate(server, allowed), generate(server, same_as)
    assert first.status_code == second.status_code == 200, first.text
    assert first.json() == second.json()
    assert first.headers["ETag"] == second.headers["ETag"]


def test_a_byte_order_mark_is_ignored(server: Server, workers: set[int]) -> None:
    response = requests.post(f"{server.url}/generate", data=codecs.BOM_UTF8 + b'{"seed": 3}',
                             headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 200
    assert response.json() == generate(server, {"seed": 3}).json()


def test_query_numbers_and_repeated_labels(server: Server, workers: set[int]) -> None:
    url = f"{server.url}/generate"
    plain = requests.get(f"{url}?model=cond&seed=4&n=2&labels=1,2", timeout=30)
    assert plain.status_code == 200
    for query in ("model=cond&seed=4.0&n=2e0&labels=1,2", "model=cond&seed=4&n=2&labels=1&labels=2"):
        response = requests.get(f"{url}?{query}", timeout=30)
        assert response.status_code == 200, response.text
        assert response.content == plain.content


def test_v2_integers_written_as_numbers(server: Server, workers: set[int]) -> None:
    url = f"{server.url}/v2/models/cond/infer"
    plain = {"inputs": [z(2), labels([0, 2])]}
    floats = {"inputs": [z(2, shape=[2.0, float(LATENT)]), labels([0.0, 2.0], shape=[2.0])]}
    first = requests.post(url, json=plain, timeout=30)
    second = requests.post(url, json=floats, timeout=30)
    assert first.status_code == second.status_code == 200, second.text
    assert first.json() == second.json()


@pytest.mark.parametrize("path", ["/generate", "/healthz", "/models/tiny", "/v2/models/tiny/infer"])
def test_options_answers_allow(server: Server, workers: set[int], path: str) -> None:
    response = requests.options(f"{server.url}{path}", timeout=30)
    assert response.status_code == 200
    assert response.content == b""
    assert "OPTIONS" in response.headers["Allow"]


def test_odd_headers_that_are_still_valid_http(server: Server, workers: set[int]) -> None:
    data = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Latin: caf\xe9\r\nConnection: close\r\n"
            + b"".join(b"X-H%d: %d\r\n" % (i, i) for i in range(90)) + b"\r\n")
    reply = exchange(server, data)
    assert reply.status == 200, reply.body
    assert json.loads(reply.body)["status"] == "ok"


def test_no_worker_was_replaced(server: Server, workers: set[int]) -> None:
    """Runs last: every case above was answered without a crash or a traceback."""
    assert worker_pids(server) == workers
    log = Path(server.log_path).read_text(errors="replace")
    assert "Traceback" not in log, log[-5000:]
