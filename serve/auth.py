"""Optional bearer-token authentication, and the request guard that applies it with the rate limit.

With ``GAN_API_TOKEN`` (tokens separated by commas, for rotation) or ``GAN_API_TOKEN_FILE`` (one
token per line) set, every request needs ``Authorization: Bearer <token>`` except those to the
routes of the groups in ``GAN_AUTH_EXEMPT`` (by default health, metrics and openapi). A request
without a token, or with a wrong one, is a 401 with ``WWW-Authenticate`` (RFC 6750).

The parsing functions raise ValueError with a message naming the variable and never the token;
serve.config turns that into a ConfigError. Nothing here runs per request unless auth or the rate
limit is on: :func:`install_guard` registers its one before-request hook only then.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, jsonify, request

from serve.errors import checked_code, error_json
from serve.page import PAGE_PATHS

if TYPE_CHECKING:
    from serve.config import Settings
    from serve.ratelimit import Limiter

REALM = "gan-serve"
CHALLENGE = f'Bearer realm="{REALM}"'
INVALID_CHALLENGE = f'{CHALLENGE}, error="invalid_token"'
TOKEN_MIN = 16  # characters: a shorter secret is guessable
TOKEN_MAX = 4096
# RFC 6750's b64token: what a client can send after "Bearer " without quoting.
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*\Z")
_BEARER_RE = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +(\S+) *\Z")

# The routes each GAN_AUTH_EXEMPT group opens (exact paths; HEAD and every method included).
EXEMPT_GROUPS: dict[str, tuple[str, ...]] = {
    "health": ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"),
    "metrics": ("/metrics",),
    "openapi": ("/openapi.json",),
}
DEFAULT_EXEMPT = "health,metrics,openapi"

log = logging.getLogger(__name__)
# Each token file's tokens when last read, and the pid of the process that read them.
_token_files: dict[str, tuple[int, tuple[str, ...]]] = {}


def parse_tokens(items: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """Check tokens given as ``(where, token)`` pairs; ``where`` names one in a message.

    A token is 16 to 4096 characters of RFC 6750's b64token (letters, digits, ``-._~+/``,
    then ``=`` padding): no whitespace, no comma. No message ever contains a token.
    """
    tokens: list[str] = []
    for where, token in items:
        if not token:
            raise ValueError(f"{where} is empty")
        if not _TOKEN_RE.match(token):
            raise ValueError(
                f"{where} has characters a bearer token cannot have: use letters, digits and "
                "-._~+/ (then = padding), no spaces"
            )
        if not TOKEN_MIN <= len(token) <= TOKEN_MAX:
            raise ValueError(
                f"{where} is {len(token)} characters long; a token needs {TOKEN_MIN} to "
                f"{TOKEN_MAX} (for example: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        if token in tokens:
            raise ValueError(f"{where} repeats an earlier token")
        tokens.append(token)
    return tuple(tokens)


def tokens_from_variable(raw: str) -> tuple[str, ...]:
    """GAN_API_TOKEN: one token, or several separated by commas (spaces around them ignored)."""
    parts = [part.strip() for part in raw.split(",")]
    if len(parts) == 1:
        return parse_tokens([("GAN_API_TOKEN", parts[0])])
    return parse_tokens((f"GAN_API_TOKEN's token {i}", part) for i, part in enumerate(parts, 1))


def tokens_from_file(path: Path) -> tuple[str, ...]:
    """GAN_API_TOKEN_FILE: one token per line; blank lines and lines starting with # ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"GAN_API_TOKEN_FILE cannot be read: {e}") from None
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.strip()
        if token and not token.startswith("#"):
            items.append((f"GAN_API_TOKEN_FILE line {number}", token))
    if not items:
        raise ValueError(f"GAN_API_TOKEN_FILE {path} holds no token (only blank lines or comments)")
    return parse_tokens(items)


def load_token_file(path: Path) -> tuple[str, ...]:
    """GAN_API_TOKEN_FILE's tokens for this process, read by :func:`tokens_from_file`.

    The gunicorn master reads the file at start and at each HUP; the workers it forks take the
    tokens it read (so every worker has the same ones) instead of reading the file again. A
    file that has become unreadable or invalid when read again (a HUP) is logged as an error and
    the tokens read before are kept: a mistake in it does not stop the service. At the first
    read it is a ValueError, which stops the start.
    """
    key = str(path)
    earlier = _token_files.get(key)
    if earlier is not None and earlier[0] != os.getpid():
        return earlier[1]  # forked from the process that read them: the master's tokens
    try:
        tokens = tokens_from_file(path)
    except ValueError as e:
        if earlier is None:
            raise
        log.error("%s; keeping the %d tokens read from it before", e, len(earlier[1]))
        tokens = earlier[1]
    _token_files[key] = (os.getpid(), tokens)
    return tokens


def parse_exempt(raw: str) -> frozenset[str]:
    """GAN_AUTH_EXEMPT: groups from health, metrics, openapi separated by commas, or ``none``."""
    text = raw.strip().lower()
    if text == "none":
        return frozenset()
    groups = [group.strip() for group in text.split(",")]
    unknown = [group for group in groups if group not in EXEMPT_GROUPS]
    if unknown or len(set(groups)) != len(groups):
        raise ValueError(
            f"GAN_AUTH_EXEMPT must be none or some of {', '.join(EXEMPT_GROUPS)} separated by "
            f"commas, each once, got {raw!r}"
        )
    return frozenset(groups)


def exempt_paths(groups: Iterable[str]) -> frozenset[str]:
    """The request paths the exempt groups open, and the web page's: it holds no secrets (its
    API calls send the token the user types)."""
    return frozenset(path for group in groups for path in EXEMPT_GROUPS[group]) | PAGE_PATHS


class TokenChecker:
    """Compares a request's token with every configured token in constant time.

    The tokens are kept as sha256 digests and the presented token is hashed once, so each
    comparison is of 32 bytes whatever the lengths, and every configured token is compared
    (no early exit), so neither the time nor the result tells which one matched or how long
    they are.
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = [hashlib.sha256(token.encode("ascii")).digest() for token in tokens]

    def __repr__(self) -> str:
        return f"TokenChecker({len(self._digests)} tokens)"

    def match(self, header: str | None) -> tuple[bytes | None, bool]:
        """``(client key, True)`` for a valid ``Bearer`` header; ``(None, presented)``, where
        ``presented`` says whether a bearer token was given at all, otherwise."""
        found = _BEARER_RE.match(header) if header else None
        if found is None:
            return None, False
        # WSGI header values are latin-1 decoded bytes: this gives the bytes the client sent.
        digest = hashlib.sha256(found.group(1).encode("latin-1")).digest()
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(known, digest)
        # The key names the client in the rate limit: a hash, never the token itself.
        return (b"token:" + digest[:16], True) if matched else (None, True)


def install_guard(app: Flask, settings: Settings, limiter: Limiter | None) -> None:
    """Register one before-request hook for auth and the rate limit, only if either is on."""
    checker = TokenChecker(settings.api_tokens) if settings.api_tokens else None
    if checker is None and limiter is None:
        return  # nothing to check: no hook, no cost per request
    open_paths = exempt_paths(settings.auth_exempt)

    def refuse(status: int, code: str, message: str, headers: dict[str, str]) -> Response:
        response = jsonify(error_json(request.path, status, checked_code(status, code), message))
        response.status_code = status
        response.headers.update(headers)
        return response

    def guard() -> Response | None:
        if request.path in open_paths:
            return None
        key = None
        if checker is not None:
            key, presented = checker.match(request.headers.get("Authorization"))
            if key is None:
                if presented:
                    return refuse(401, "invalid_token", "the bearer token is not valid",
                                  {"WWW-Authenticate": INVALID_CHALLENGE})
                return refuse(401, "missing_token", "this route needs Authorization: Bearer <token>",
                              {"WWW-Authenticate": CHALLENGE})
        if limiter is not None:
            wait = limiter.check(key or limiter.address_key(request.environ))
            if wait:
                return refuse(429, "rate_limited",
                              f"rate limit of {limiter.describe()} exceeded; retry after {wait} s",
                              {"Retry-After": str(wait)})
        return None

    # First of the before-request hooks: a refused request costs no rescan or other work.
    hooks: list[Any] = app.before_request_funcs.setdefault(None, [])
    hooks.insert(0, guard)
