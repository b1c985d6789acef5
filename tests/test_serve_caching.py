"""HTTP caching of /generate: strong ETags, If-None-Match (304 on GET/HEAD, 412 on POST), and
Cache-Control. End to end through gunicorn, plus the parser's edge cases through Flask."""

from __future__ import annotations

import http.client
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from helpers.server import SPREAD_ATTEMPTS, Server
from helpers.tiny_models import LATENT, write_model, write_repository

from serve import api, imaging, latent
from serve.app import create_app
from serve.model import OnnxGenerator

IMMUTABLE = "public, max-age=31536000, immutable"
ETAG_RE = re.compile(r'"[0-9a-f]{32}"')


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, gunicorn: Callable[..., Server]) -> Server:
    repo = write_repository(tmp_path_factory.mktemp("caching") / "models")
    return gunicorn(GAN_MODELS_DIR=str(repo), GAN_WORKERS="2", GAN_DEFAULT_MODEL="tiny")


def get(server: Server, query: str, **headers: str) -> requests.Response:
    return requests.get(f"{server.url}/generate?{query}", headers=headers, timeout=30)


def post(server: Server, body: dict[str, Any], **headers: str) -> requests.Response:
    return requests.post(f"{server.url}/generate", json=body, headers=headers, timeout=30)


def etag_of(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    etag = response.headers["ETag"]
    assert ETAG_RE.fullmatch(etag), etag  # strong: quoted, no W/
    return etag


# --- over HTTP, through gunicorn -----------------------------------------------------------


def test_etag_is_the_same_from_every_worker_and_every_call(server: Server) -> None:
    # method -> worker pid -> the (ETag, body) pairs it answered with; new connection each time.
    seen: dict[str, dict[str, set[tuple[str, bytes]]]] = {"GET": {}, "POST": {}}
    for _ in range(SPREAD_ATTEMPTS):
        for response in (
            get(server, "seed=7&n=3", Connection="close"),
            post(server, {"seeds": [7, 8], "format": "npy"}, Connection="close"),
        ):
            by_pid = seen[str(response.request.method)]
            by_pid.setdefault(response.headers["X-Worker-Pid"], set()).add(
                (etag_of(response), response.content)
            )
        if all(len(by_pid) == 2 for by_pid in seen.values()):
            break
    for method, by_pid in seen.items():
        assert len(by_pid) == 2, f"{method}: only worker {list(by_pid)} answered"
        assert len(set().union(*by_pid.values())) == 1, method  # one ETag, one body


def test_etag_differs_with_everything_that_changes_the_bytes(server: Server) -> None:
    requests_ = [
        {"seeds": [1]},
        {"seeds": [2]},
        {"seeds": [1, 2]},
        {"seeds": [2, 1]},
        {"seeds": [1], "format": "png"},
        {"seeds": [1], "format": "npy"},
        {"seeds": [1], "version": 1},
        {"seeds": [1], "model": "cond"},
        {"seeds": [1], "model": "cond", "labels": 2},
        {"noise": [[0.0] * LATENT]},
    ]
    responses = [post(server, body) for body in requests_]
    etags = [etag_of(r) for r in responses]
    assert len(set(etags)) == len(etags)
    assert len({r.content for r in responses}) == len(responses)


def test_same_bytes_same_etag(server: Server) -> None:
    # Seeds given as a list or as seed + n are the same request once resolved: same bytes,
    # same ETag, in every format (the JSON lists the seeds either way).
    for fmt in ("json", "png", "npy"):
        listed = post(server, {"seeds": [1, 2], "format": fmt})
        ranged = post(server, {"seed": 1, "n": 2, "format": fmt})
        assert listed.content == ranged.content
        assert etag_of(listed) == etag_of(ranged), fmt
    # GET is the PNG grid of POST's format png.
    by_get, by_post = get(server, "seed=1&n=2"), post(server, {"seeds": [1, 2], "format": "png"})
    assert by_get.content == by_post.content and etag_of(by_get) == etag_of(by_post)
    # The labels used count, not how they were asked for: seed 4 % 3 classes is label 1.
    implicit = post(server, {"model": "cond", "seeds": [4]})
    explicit = post(server, {"model": "cond", "seeds": [4], "labels": [1]})
    assert implicit.content == explicit.content and etag_of(implicit) == etag_of(explicit)


def test_noise_etag_follows_the_float32_values(server: Server) -> None:
    z = latent.noise_for_seeds([5], LATENT)
    base = post(server, {"noise": z.tolist()})
    changed = z.copy()
    changed[0, 3] = np.nextafter(changed[0, 3], np.float32(np.inf))  # one value, one ulp
    assert etag_of(post(server, {"noise": changed.tolist()})) != etag_of(base)
    assert etag_of(post(server, {"noise": z.tolist()})) == etag_of(base)
    # Numbers written differently that are the same float32 are the same request.
    same = [[float(np.float32(0.1))] * LATENT]
    assert etag_of(post(server, {"noise": [[0.1] * LATENT]})) == etag_of(post(server, {"noise": same}))
    # Noise and the seed it comes from: the JSON differs (seeds vs null), so do the ETags.
    seeded = post(server, {"seeds": [5]})
    assert seeded.json()["images"] == base.json()["images"]
    assert etag_of(seeded) != etag_of(base)


@pytest.mark.parametrize(
    "header",
    [
        "{etag}",
        'W/{etag}',
        '"other", {etag}',
        '"other" , W/{etag} ,',
        "*",
    ],
)
def test_if_none_match_gives_304_without_a_body(server: Server, header: str) -> None:
    first = get(server, "seed=3&n=2&model=tiny&version=2")
    etag = etag_of(first)
    for method in ("GET", "HEAD"):
        response = requests.request(
            method, f"{server.url}/generate?seed=3&n=2&model=tiny&version=2",
            headers={"If-None-Match": header.format(etag=etag)}, timeout=30,
        )
        assert response.status_code == 304, method
        assert response.content == b""
        assert response.headers["ETag"] == etag
        assert response.headers["Cache-Control"] == IMMUTABLE
        assert response.headers["X-Model-Name"] == "tiny"
        assert response.headers["X-Model-Version"] == "2"
        assert "Content-Length" not in response.headers
        assert "Content-Type" not in response.headers


def test_if_none_match_with_other_tags_gives_the_image(server: Server) -> None:
    first = get(server, "seed=3")
    etag = etag_of(first)
    for header in ('"other"', f'W/"x{etag[1:]}', f'"{etag[2:]}', f"{etag}x"):
        response = get(server, "seed=3", **{"If-None-Match": header})
        assert response.status_code == 200, header
        assert response.content == first.content
        assert response.headers["ETag"] == etag


def test_if_none_match_on_several_header_lines(server: Server) -> None:
    etag = etag_of(get(server, "seed=9"))
    url = urlsplit(server.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.putrequest("GET", "/generate?seed=9")
        connection.putheader("If-None-Match", '"other"')
        connection.putheader("If-None-Match", etag)
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 304 and response.read() == b""
        # The connection stays usable after a bodiless 304.
        connection.request("GET", "/generate?seed=9")
        again = connection.getresponse()
        assert again.status == 200 and again.getheader("ETag") == etag
        assert again.read().startswith(b"\x89PNG")
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("query", "body", "cache_control"),
    [
        ("seed=1&model=tiny&version=1", {"seed": 1, "model": "tiny", "version": 1}, IMMUTABLE),
        ("seed=1&model=cond&version=1", {"seed": 1, "model": "cond", "version": 1}, IMMUTABLE),
        # The default model can change (a new model, GAN_DEFAULT_MODEL), so can the response.
        ("seed=1&version=1", {"seed": 1, "version": 1}, "no-cache"),
        ("seed=1&model=tiny", {"seed": 1, "model": "tiny"}, "no-cache"),
        ("seed=1", {"seed": 1}, "no-cache"),
    ],
)
def test_cache_control_is_immutable_only_with_model_and_version(
    server: Server, query: str, body: dict[str, Any], cache_control: str
) -> None:
    for response in (get(server, query), post(server, body), post(server, body | {"format": "npy"})):
        assert response.status_code == 200
        assert response.headers["Cache-Control"] == cache_control
        etag_of(response)


def test_post_with_a_matching_if_none_match_is_412(server: Server) -> None:
    body = {"seeds": [1, 2], "format": "png"}
    etag = etag_of(post(server, body))
    for header in (etag, f'"other", W/{etag}', "*"):
        response = post(server, body, **{"If-None-Match": header})
        assert response.status_code == 412, header
        assert response.json()["error"]["code"] == "precondition_failed"
        assert "ETag" not in response.headers and "Cache-Control" not in response.headers
    response = post(server, body, **{"If-None-Match": '"other"'})
    assert response.status_code == 200 and response.headers["ETag"] == etag


def test_errors_carry_no_etag_even_when_conditional(server: Server) -> None:
    for response in (
        get(server, "seed=1&model=nope"),
        get(server, "seed=1&model=nope", **{"If-None-Match": "*"}),
        get(server, "seed=-1", **{"If-None-Match": "*"}),
        post(server, {"seed": 1, "labels": 0}, **{"If-None-Match": "*"}),
    ):
        assert response.status_code in (404, 422)
        assert "ETag" not in response.headers and "Cache-Control" not in response.headers


def test_other_routes_have_no_etag(server: Server) -> None:
    for path in ("/healthz", "/models", "/openapi.json"):
        assert "ETag" not in requests.get(f"{server.url}{path}", timeout=30).headers


# --- through Flask: no inference on a match, and the parser's edge cases --------------------


def count_work(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"generate": 0, "png": 0, "noise": 0}
    original_generate, original_png = OnnxGenerator.generate, imaging.png_bytes
    original_noise = latent.noise_for_seeds

    def generate(self: OnnxGenerator, *args: Any, **kwargs: Any) -> np.ndarray:
        calls["generate"] += 1
        return original_generate(self, *args, **kwargs)

    def png(*args: Any) -> bytes:
        calls["png"] += 1
        return original_png(*args)

    def noise(*args: Any) -> np.ndarray:
        calls["noise"] += 1
        return original_noise(*args)

    monkeypatch.setattr(OnnxGenerator, "generate", generate)
    monkeypatch.setattr(imaging, "png_bytes", png)
    monkeypatch.setattr(latent, "noise_for_seeds", noise)
    return calls


def test_a_match_skips_inference_and_encoding(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    etag = client.get("/generate?seed=1&n=4").headers["ETag"]
    post_etag = client.post("/generate", json={"seed": 1, "n": 4}).headers["ETag"]
    calls = count_work(monkeypatch)
    assert client.get("/generate?seed=1&n=4", headers={"If-None-Match": etag}).status_code == 304
    assert client.head("/generate?seed=1&n=4", headers={"If-None-Match": "*"}).status_code == 304
    response = client.post("/generate", json={"seed": 1, "n": 4}, headers={"If-None-Match": post_etag})
    assert response.status_code == 412
    assert calls == {"generate": 0, "png": 0, "noise": 0}
    assert client.get("/generate?seed=1&n=4").status_code == 200
    assert calls["generate"] == 1 and calls["png"] == 1 and calls["noise"] == 1


def test_json_etag_depends_on_flask_indenting_it(app: Flask, client: FlaskClient) -> None:
    compact = client.post("/generate", json={"seeds": [1]})
    app.json.compact = False  # type: ignore[attr-defined]  # as in debug mode
    indented = client.post("/generate", json={"seeds": [1]})
    assert compact.data != indented.data
    assert compact.headers["ETag"] != indented.headers["ETag"]
    # The binary formats do not change with it.
    png = client.post("/generate", json={"seeds": [1], "format": "png"})
    app.json.compact = None  # type: ignore[attr-defined]
    assert client.post("/generate", json={"seeds": [1], "format": "png"}).headers["ETag"] == (
        png.headers["ETag"]
    )


MATCHING = [
    "{etag}",
    "W/{etag}",
    " \t{etag}\t ",
    '"a", {etag}',
    '"a",{etag},"b"',
    ', , "a" ,, W/{etag} ,',
    '"a,b", {etag}',  # a comma inside a tag is part of it
    "*",
    " * ",
]
NOT_MATCHING = [
    "",  # an empty list
    " , ",
    '"a"',
    '""',
    'W/"a", "b"',
    "{bare}",  # not quoted: malformed, ignored
    "W/{bare}",
    "w/{etag}",  # W/ is case-sensitive
    "W /{etag}",
    '"{bare}',  # unterminated
    '{etag}"',
    '{etag} "a"',  # no comma between tags
    "{etag}, garbage",  # one bad member: the whole header is ignored
    "*, {etag}",  # * stands alone
    "**",
    '"a\tb", {etag}',  # a tab is not an etagc
    '"a\x7f", {etag}',
    ", " + " " * 8000 + "x",  # long and malformed: still quick
    '"a",' * 2000 + "x",
]


@pytest.mark.parametrize("header", MATCHING)
def test_if_none_match_that_matches(client: FlaskClient, header: str) -> None:
    etag = client.get("/generate?seed=2").headers["ETag"]
    response = client.get("/generate?seed=2", headers={"If-None-Match": header.format(etag=etag)})
    assert response.status_code == 304
    assert response.data == b"" and response.headers["ETag"] == etag


@pytest.mark.parametrize("header", NOT_MATCHING)
def test_if_none_match_that_does_not_match_or_is_malformed(client: FlaskClient, header: str) -> None:
    first = client.get("/generate?seed=2")
    etag = first.headers["ETag"]
    value = header.format(etag=etag, bare=etag.strip('"')) if "{" in header else header
    response = client.get("/generate?seed=2", headers={"If-None-Match": value})
    assert response.status_code == 200
    assert response.data == first.data and response.headers["ETag"] == etag


def test_if_none_match_with_non_latin_1_text_is_ignored(client: FlaskClient) -> None:
    # WSGI hands header bytes over as latin-1; anything beyond is not an etagc.
    response = client.get("/generate?seed=2", headers={"If-None-Match": '"\u20ac"'})
    assert response.status_code == 200


def test_parser_returns_the_opaque_tags() -> None:
    assert api.parse_if_none_match('"a", W/"b",, "c,d" ') == {'"a"', '"b"', '"c,d"'}
    assert api.parse_if_none_match(" * ") == {"*"}
    assert api.parse_if_none_match("") == frozenset()
    assert api.parse_if_none_match('"a" "b"') is None
    assert api.parse_if_none_match('"\xe9"') == {'"\xe9"'}  # obs-text is allowed


def test_openapi_documents_caching(client: FlaskClient) -> None:
    paths = client.get("/openapi.json").json["paths"]["/generate"]
    assert [p["name"] for p in paths["parameters"]] == ["If-None-Match"]
    assert paths["parameters"][0]["in"] == "header"
    get_responses, post_responses = paths["get"]["responses"], paths["post"]["responses"]
    for ok in (get_responses["200"], post_responses["200"], get_responses["304"]):
        assert {"ETag", "Cache-Control", "X-Model-Name", "X-Model-Version"} <= set(ok["headers"])
    assert "content" not in get_responses["304"]
    assert "412" in post_responses and "304" not in post_responses


def test_models_with_same_name_and_version_elsewhere_differ_by_sha256(tmp_path: Path) -> None:
    # Two repositories, same names and versions, other weights: the sha256 tells them apart.
    etags = []
    for weight_seed in (1, 5):
        repo = tmp_path / str(weight_seed)
        write_model(repo, "tiny", 1, weight_seed=weight_seed)
        client = create_app({"GAN_MODELS_DIR": str(repo), "GAN_RELOAD_INTERVAL": "0"}).test_client()
        etags.append(client.get("/generate?seed=1").headers["ETag"])
    assert etags[0] != etags[1]
