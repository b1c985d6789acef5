"""Bearer-token authentication through real gunicorn over HTTP, and its settings."""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient
from helpers.server import Server, assert_start_refused
from helpers.tiny_models import LATENT, write_repository
from openapi_spec_validator import validate

from serve.app import create_app
from serve.auth import (
    TokenChecker,
    load_token_file,
    parse_exempt,
    tokens_from_file,
    tokens_from_variable,
)
from serve.config import ConfigError, load_settings

OLD = "old-token-0123456789abcdef"
NEW = "new-token-FEDCBA9876543210"
FILE_A = "file-token-aaaaaaaaaaaaaaaa"
FILE_B = "file-token-bbbbbbbbbbbbbbbb"
FILE_C = "file-token-cccccccccccccccc"
CHALLENGE = 'Bearer realm="gan-serve"'
INVALID = 'Bearer realm="gan-serve", error="invalid_token"'
WAIT = 60.0  # seconds to wait for workers re-created by a HUP: a bound, not an expectation

# Every route that needs a token (method, path, JSON body): the API, the models, and /v2.
PROTECTED = [
    ("get", "/generate?seed=1&n=2", None),
    ("post", "/generate", {"seeds": [1]}),
    ("get", "/models", None),
    ("get", "/models/tiny", None),
    ("get", "/v2", None),
    ("get", "/v2/models/tiny", None),
    ("get", "/v2/models/tiny/versions/2", None),
    ("get", "/v2/models/tiny/ready", None),
    ("post", "/v2/models/tiny/infer",
     {"inputs": [{"name": "z", "shape": [1, LATENT], "datatype": "FP32", "data": [0.0] * LATENT}]}),
    ("get", "/no/such/route", None),
]
OPEN = ["/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics", "/openapi.json"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("auth") / "models")


@pytest.fixture(scope="module")
def server(repo: Path, gunicorn: Callable[..., Server]) -> Server:
    """Two tokens (an old and a new one, as during a rotation), debug logging."""
    return gunicorn(
        GAN_MODELS_DIR=str(repo), GAN_WORKERS="1", GAN_DEFAULT_MODEL="tiny",
        GAN_API_TOKEN=f"{OLD}, {NEW}", GAN_LOG_LEVEL="debug",
    )


def call(server: Server, method: str, path: str, body: dict | None = None,
         token: str | None = None, authorization: str | None = None) -> requests.Response:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if authorization is not None:
        headers["Authorization"] = authorization
    return requests.request(method, f"{server.url}{path}", json=body, headers=headers, timeout=30)


def error_code(response: requests.Response, path: str) -> str | None:
    """The code of an API error; None for a /v2 error, which has only a message."""
    error = response.json()["error"]
    if path.startswith("/v2"):
        assert isinstance(error, str)  # the protocol's shape: {"error": "<message>"}
        return None
    assert error["status"] == response.status_code
    return error["code"]


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_no_token_is_a_401_with_a_challenge(server: Server, method: str, path: str,
                                            body: dict | None) -> None:
    response = call(server, method, path, body)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == CHALLENGE
    assert response.headers["Content-Type"] == "application/json"
    assert error_code(response, path) in ("missing_token", None)
    assert "X-Request-ID" in response.headers  # answered by the app, instrumented as any


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_wrong_token_is_a_401_invalid_token(server: Server, method: str, path: str,
                                            body: dict | None) -> None:
    for wrong in (OLD[:-1], OLD + "x", NEW.lower(), "x"):
        response = call(server, method, path, body, token=wrong)
        assert response.status_code == 401, wrong
        assert response.headers["WWW-Authenticate"] == INVALID
        assert error_code(response, path) in ("invalid_token", None)


@pytest.mark.parametrize("token", [OLD, NEW])
@pytest.mark.parametrize(("method", "path", "body"), PROTECTED[:-1])
def test_each_rotated_token_works(server: Server, token: str, method: str, path: str,
                                  body: dict | None) -> None:
    response = call(server, method, path, body, token=token)
    assert response.status_code == 200, response.text


def test_a_token_is_one_of_the_configured_ones_whole(server: Server) -> None:
    both = call(server, "get", "/models", token=f"{OLD},{NEW}")
    assert both.status_code == 401
    assert call(server, "get", "/models", authorization=f"bearer  {NEW}").status_code == 200
    # Another scheme is no bearer token: answered as a missing one.
    basic = call(server, "get", "/models", authorization=f"Basic {OLD}")
    assert basic.status_code == 401
    assert basic.headers["WWW-Authenticate"] == CHALLENGE
    assert call(server, "get", "/models", authorization="Bearer").status_code == 401
    assert call(server, "get", "/models", authorization=OLD).status_code == 401


def test_v2_errors_keep_the_protocol_shape(server: Server) -> None:
    response = call(server, "post", "/v2/models/tiny/infer", {"inputs": []})
    assert response.status_code == 401
    assert set(response.json()) == {"error"} and isinstance(response.json()["error"], str)


@pytest.mark.parametrize("path", OPEN)
def test_health_metrics_and_openapi_are_open_by_default(server: Server, path: str) -> None:
    assert call(server, "get", path).status_code == 200
    assert call(server, "get", path, token="wrong").status_code == 200


def test_openapi_documents_the_bearer_scheme(server: Server) -> None:
    spec = call(server, "get", "/openapi.json").json()
    validate(spec)
    assert spec["components"]["securitySchemes"]["bearer"]["type"] == "http"
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    protected = {
        "/generate", "/models", "/models/{name}", "/v2", "/v2/models/{name}",
        "/v2/models/{name}/versions/{version}", "/v2/models/{name}/ready",
        "/v2/models/{name}/versions/{version}/ready", "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    }
    assert protected <= set(spec["paths"])
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            if "security" not in operation:
                # Documented as open: it must be, and hold no 401.
                assert path not in protected, path
                assert "401" not in operation["responses"], path
                if "{" not in path and method == "get":
                    assert call(server, "get", path).status_code != 401, path
                continue
            assert path not in OPEN, path
            assert operation["security"] == [{"bearer": []}], path
            error = operation["responses"]["401"]["content"]["application/json"]["schema"]
            expected = "V2Error" if path.startswith("/v2") else "Error"
            assert error["$ref"] == f"#/components/schemas/{expected}", path
            if "{" not in path and method == "get":
                assert call(server, "get", path).status_code == 401, path


def test_tokens_are_never_logged(server: Server) -> None:
    call(server, "get", "/models", token=OLD)
    call(server, "get", "/models", token=NEW + "x")
    call(server, "post", "/generate", {"seeds": [1]}, token=NEW)
    log = server.log_path.read_text(errors="replace")
    assert "GET /models" in log or '"path":"/models"' in log  # the access lines are there
    assert OLD not in log and NEW not in log


def test_auth_is_off_by_default(repo: Path, gunicorn: Callable[..., Server]) -> None:
    server = gunicorn(GAN_MODELS_DIR=str(repo), GAN_WORKERS="1", GAN_DEFAULT_MODEL="tiny")
    for method, path, body in PROTECTED[:-1]:
        assert call(server, method, path, body).status_code == 200, path
    assert call(server, "get", "/models", token="anything").status_code == 200
    spec = call(server, "get", "/openapi.json").json()
    assert "securitySchemes" not in spec["components"]
    assert not any("security" in op for item in spec["paths"].values() for op in item.values()
                   if isinstance(op, dict))


def write_token_file(path: Path, *tokens: str) -> Path:
    path.write_text("# service tokens, one per line\n\n" + "\n".join(f"  {t}  " for t in tokens)
                    + "\n# retired: not-a-token\n")
    return path


def test_token_file_exempt_groups_and_reread_on_hup(
    repo: Path, tmp_path: Path, gunicorn: Callable[..., Server]
) -> None:
    path = write_token_file(tmp_path / "tokens", FILE_A, FILE_B)
    server = gunicorn(GAN_MODELS_DIR=str(repo), GAN_WORKERS="1", GAN_DEFAULT_MODEL="tiny",
                      GAN_API_TOKEN_FILE=str(path), GAN_AUTH_EXEMPT="health")
    for token in (FILE_A, FILE_B):
        assert call(server, "get", "/models", token=token).status_code == 200
    assert call(server, "get", "/models", token=FILE_C).status_code == 401
    assert call(server, "get", "/models", token="not-a-token").status_code == 401
    # Only the health group is open: metrics and the document need a token now.
    assert call(server, "get", "/healthz").status_code == 200
    assert call(server, "get", "/v2/health/ready").status_code == 200
    for path_ in ("/metrics", "/openapi.json"):
        assert call(server, "get", path_).status_code == 401
        assert call(server, "get", path_, token=FILE_A).status_code == 200
    spec = call(server, "get", "/openapi.json", token=FILE_B).json()
    assert spec["paths"]["/metrics"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]

    # Rotate: B stays, A is retired, C is new; a HUP re-creates the workers, which re-read it.
    write_token_file(path, FILE_B, FILE_C)
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if (call(server, "get", "/models", token=FILE_C).status_code == 200
                and call(server, "get", "/models", token=FILE_A).status_code == 401):
            break
        time.sleep(0.1)  # polling interval while the new workers start
    for _ in range(5):
        assert call(server, "get", "/models", token=FILE_C).status_code == 200
        assert call(server, "get", "/models", token=FILE_B).status_code == 200
        assert call(server, "get", "/models", token=FILE_A).status_code == 401
    assert server.process.poll() is None

    # A file broken before a HUP is logged, and the tokens read before are kept: no outage.
    before = call(server, "get", "/healthz").json()["pid"]
    path.write_text("# emptied by mistake\n")
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + WAIT
    while server.process.poll() is None and time.monotonic() < deadline:
        try:
            if call(server, "get", "/healthz").json()["pid"] != before:
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.1)  # polling interval while the new worker starts
    assert server.process.poll() is None
    assert call(server, "get", "/healthz").json()["pid"] != before
    assert call(server, "get", "/models", token=FILE_C).status_code == 200
    assert call(server, "get", "/models", token=FILE_A).status_code == 401
    assert "holds no token (only blank lines or comments); keeping the 2 tokens read from it " \
        "before" in server.log_path.read_text(errors="replace")


SHORT = "short-token"


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"GAN_API_TOKEN": ""}, "GAN_API_TOKEN is empty"),
        ({"GAN_API_TOKEN": SHORT}, "GAN_API_TOKEN is 11 characters long; a token needs 16"),
        ({"GAN_API_TOKEN": f"{OLD},"}, "GAN_API_TOKEN's token 2 is empty"),
        ({"GAN_API_TOKEN": f"{OLD},{SHORT}"}, "GAN_API_TOKEN's token 2 is 11 characters long"),
        ({"GAN_API_TOKEN": "has a space in it, 0123456789"}, "characters a bearer token cannot have"),
        ({"GAN_API_TOKEN": f"{OLD},{OLD}"}, "GAN_API_TOKEN's token 2 repeats an earlier token"),
        ({"GAN_API_TOKEN": OLD, "GAN_API_TOKEN_FILE": "tokens"}, "not both"),
        ({"GAN_API_TOKEN_FILE": "no-such-file"}, "GAN_API_TOKEN_FILE cannot be read"),
        ({"GAN_AUTH_EXEMPT": "health,admin"}, "GAN_AUTH_EXEMPT must be none or some of"),
    ],
)
def test_bad_auth_settings_stop_gunicorn(repo: Path, env: dict[str, str], fragment: str) -> None:
    result = assert_start_refused(fragment, GAN_MODELS_DIR=str(repo), **env)
    for token in (SHORT, OLD, "has a space"):
        if token in env.get("GAN_API_TOKEN", ""):
            assert token not in result.stdout  # the message names the token's place, never it


def test_token_file_without_tokens_stops_gunicorn(repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# nothing yet\n\n")
    assert_start_refused("holds no token", GAN_MODELS_DIR=str(repo), GAN_API_TOKEN_FILE=str(path))
    path.write_text(f"{OLD}\n{SHORT}\n")
    result = assert_start_refused("GAN_API_TOKEN_FILE line 2 is 11 characters long",
                                  GAN_MODELS_DIR=str(repo), GAN_API_TOKEN_FILE=str(path))
    assert SHORT not in result.stdout and OLD not in result.stdout


# --- Units: parsing, the checker, the hook registration -------------------------------------


def test_token_parsing() -> None:
    assert tokens_from_variable(OLD) == (OLD,)
    assert tokens_from_variable(f" {OLD} , {NEW} ") == (OLD, NEW)
    assert tokens_from_variable("a" * 16 + "==") == ("a" * 16 + "==",)
    for bad in ("", " ", "a" * 15, "a" * 4097, f"{OLD},,{NEW}", "ä" * 20, "abc=def" + "a" * 16):
        with pytest.raises(ValueError):
            tokens_from_variable(bad)


def test_token_file_parsing(tmp_path: Path) -> None:
    path = write_token_file(tmp_path / "tokens", FILE_A, FILE_B)
    assert tokens_from_file(path) == (FILE_A, FILE_B)
    path.write_bytes(b"\xff\xfe" + FILE_A.encode())
    with pytest.raises(ValueError, match="cannot be read"):
        tokens_from_file(path)
    path.write_text(f"{FILE_A} {FILE_B}\n")
    with pytest.raises(ValueError, match="line 1 has characters"):
        tokens_from_file(path)


def _tokens_in_child(path: Path, results: multiprocessing.Queue) -> None:
    results.put(load_token_file(path))


def test_token_file_read_again_keeps_the_last_good_tokens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    path.write_text("")
    with pytest.raises(ValueError, match="holds no token"):
        load_token_file(path)  # the first read: a bad file stops the start
    write_token_file(path, FILE_A)
    assert load_token_file(path) == (FILE_A,)
    path.write_text(f"{SHORT}\n")
    assert load_token_file(path) == (FILE_A,)  # read again (a HUP): broken, so kept
    assert "line 1 is 11 characters long" in caplog.text
    assert "keeping the 1 tokens read from it before" in caplog.text
    assert SHORT not in caplog.text and FILE_A not in caplog.text
    write_token_file(path, FILE_B)
    assert load_token_file(path) == (FILE_B,)
    # A forked worker takes what its master read, even if the file changed since.
    write_token_file(path, FILE_C)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_tokens_in_child, args=(path, results))
    child.start()
    assert results.get(timeout=60) == (FILE_B,)
    child.join(timeout=60)
    assert child.exitcode == 0


def test_exempt_parsing() -> None:
    assert parse_exempt("health,metrics,openapi") == {"health", "metrics", "openapi"}
    assert parse_exempt(" Health , METRICS ") == {"health", "metrics"}
    assert parse_exempt("none") == frozenset()
    for bad in ("", "health,", "healthz", "health,health", "none,health"):
        with pytest.raises(ValueError, match="GAN_AUTH_EXEMPT"):
            parse_exempt(bad)


def test_checker_matches_whole_tokens_only() -> None:
    checker = TokenChecker([OLD, NEW])
    key_old, presented = checker.match(f"Bearer {OLD}")
    assert key_old is not None and presented
    key_new, _ = checker.match(f"BEARER {NEW}")
    assert key_new is not None and key_new != key_old
    assert OLD.encode() not in key_old  # the rate limit's key is a hash, not the token
    assert checker.match(f"Bearer {OLD}x") == (None, True)
    assert checker.match(f"Bearer {OLD} {NEW}") == (None, False)
    assert checker.match("Bearer ") == (None, False)
    assert checker.match(None) == (None, False)
    assert checker.match(f"Token {OLD}") == (None, False)
    assert OLD not in repr(checker)


def test_settings_never_show_the_tokens() -> None:
    settings = load_settings({"GAN_API_TOKEN": f"{OLD},{NEW}"})
    assert settings.api_tokens == (OLD, NEW)
    assert OLD not in repr(settings) and NEW not in repr(settings)
    with pytest.raises(ConfigError) as error:
        load_settings({"GAN_API_TOKEN": f"{OLD},{SHORT}"})
    assert SHORT not in str(error.value) and OLD not in str(error.value)


def test_no_hook_when_auth_and_rate_limit_are_off(models_dir: Path) -> None:
    plain = create_app({"GAN_MODELS_DIR": str(models_dir), "GAN_RELOAD_INTERVAL": "0"})
    guarded = create_app({"GAN_MODELS_DIR": str(models_dir), "GAN_RELOAD_INTERVAL": "0",
                          "GAN_API_TOKEN": OLD})
    before = plain.before_request_funcs[None]
    assert [f.__name__ for f in guarded.before_request_funcs[None]] == [
        "guard", *(f.__name__ for f in before)
    ]
    assert "guard" not in [f.__name__ for f in before]


def test_exempt_none_protects_health_too(models_dir: Path) -> None:
    app = create_app({"GAN_MODELS_DIR": str(models_dir), "GAN_RELOAD_INTERVAL": "0",
                      "GAN_API_TOKEN": OLD, "GAN_AUTH_EXEMPT": "none"})
    client: FlaskClient = app.test_client()
    for path in OPEN:
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"Authorization": f"Bearer {OLD}"}).status_code in (200, 503)
    validate(client.get("/openapi.json", headers={"Authorization": f"Bearer {OLD}"}).json)
