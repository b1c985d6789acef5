"""POST /interpolate and the interpolation math of serve.latent: the documented float32 noise,
ends byte-identical to /generate, the formats, the errors and limits, OpenAPI, and the same
bytes from every gunicorn worker."""

from __future__ import annotations

import base64
import io
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from helpers.server import SPREAD_ATTEMPTS, Server
from helpers.tiny_models import CLASSES, LATENT, SHAPE, write_repository
from openapi_spec_validator import validate as validate_openapi
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from serve import latent
from serve.imaging import GRID_PADDING
from serve.interpolate import INTERPOLATE_RESPONSE_SCHEMA, interpolate_request_schema
from serve.openapi import ERROR_SCHEMA
from serve.schema import validate

C, H, W = SHAPE
K = len(CLASSES)
METHODS = ("slerp", "lerp")


# --- The math, against references written from the documentation -------------------------


def f32(x: float) -> float:
    """A float64 rounded to the nearest float32 (as a Python float)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def documented_noise(z0: np.ndarray, z1: np.ndarray, steps: int, method: str) -> np.ndarray:
    """The interpolated noise rebuilt as docs/serving.md defines it, in plain Python floats.

    A float32 product or sum is the float64 one rounded to float32 (exact for products of
    two float32 numbers, and correct for sums: double rounding is harmless for float64 to
    float32), so this needs no float32 arithmetic of its own.
    """
    x0, x1 = [float(v) for v in z0], [float(v) for v in z1]
    times = [i / (steps - 1) for i in range(steps)]
    weights = [(1.0 - t, t) for t in times]
    if method == "slerp":
        n0 = math.sqrt(math.fsum(v * v for v in x0))
        n1 = math.sqrt(math.fsum(v * v for v in x1))
        if n0 > 0 and n1 > 0:
            dot = math.fsum(a * b for a, b in zip(x0, x1, strict=True))
            omega = math.acos(min(1.0, max(-1.0, dot / (n0 * n1))))
            if math.sin(omega) >= 1e-6:
                s = math.sin(omega)
                weights = [(math.sin((1.0 - t) * omega) / s, math.sin(t * omega) / s) for t in times]
    frames = [
        [f32(f32(f32(a) * u) + f32(f32(b) * v)) for u, v in zip(x0, x1, strict=True)] for a, b in weights
    ]
    frames[0], frames[-1] = x0, x1
    return np.array(frames, dtype=np.float32)


def reference64(z0: np.ndarray, z1: np.ndarray, steps: int, method: str) -> np.ndarray:
    """The textbook slerp or lerp in float64 numpy, for comparison within float32 tolerance."""
    a, b = z0.astype(np.float64), z1.astype(np.float64)
    t = np.linspace(0.0, 1.0, steps)[:, None]
    if method == "lerp":
        return (1 - t) * a + t * b
    omega = np.arccos(np.clip(np.dot(a / np.linalg.norm(a), b / np.linalg.norm(b)), -1, 1))
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size", [8, 100, 512])
def test_noise_matches_a_float64_reference_within_float32_tolerance(method: str, size: int) -> None:
    for a, b in [(0, 1), (42, 2**63 - 1), (7, 123456789)]:
        z0, z1 = latent.noise_for_seed(a, size), latent.noise_for_seed(b, size)
        frames = latent.interpolate(z0, z1, 16, method)
        assert frames.dtype == np.float32 and frames.shape == (16, size)
        reference = reference64(z0, z1, 16, method)
        scale = np.abs(reference).max()
        np.testing.assert_allclose(frames, reference, rtol=2e-6, atol=2e-6 * scale)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("steps", [2, 3, 8, 16, 64])
def test_noise_is_bit_for_bit_the_documented_float32_arithmetic(method: str, steps: int) -> None:
    z0, z1 = latent.noise_for_seed(3, 100), latent.noise_for_seed(10, 100)
    got = latent.interpolate(z0, z1, steps, method)
    assert got.tobytes() == documented_noise(z0, z1, steps, method).tobytes()


@pytest.mark.parametrize("method", METHODS)
def test_ends_are_the_seeds_own_noise(method: str) -> None:
    for steps in (2, 5, 16):
        z0, z1 = latent.noise_for_seed(11, 100), latent.noise_for_seed(12, 100)
        frames = latent.interpolate(z0, z1, steps, method)
        assert frames[0].tobytes() == z0.tobytes()
        assert frames[-1].tobytes() == z1.tobytes()


def test_slerp_walks_the_sphere_and_lerp_the_chord() -> None:
    z0, z1 = latent.noise_for_seed(1, 100), latent.noise_for_seed(2, 100)
    u0, u1 = z0 / np.linalg.norm(z0), z1 / np.linalg.norm(z1)
    slerp = np.linalg.norm(latent.interpolate(u0, u1, 9, "slerp").astype(np.float64), axis=1)
    lerp = np.linalg.norm(latent.interpolate(u0, u1, 9, "lerp").astype(np.float64), axis=1)
    np.testing.assert_allclose(slerp, 1.0, atol=1e-6)  # unit vectors stay on the unit sphere
    assert lerp[4] < 0.8  # nearly orthogonal: the chord's middle is about 1/sqrt(2) long


def test_weights_follow_t() -> None:
    assert latent.interpolation_times(5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    z0, z1 = latent.noise_for_seed(4, 32), latent.noise_for_seed(5, 32)
    a, b = latent.interpolation_weights(z0, z1, 5, "lerp")
    assert a.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0] and b.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    a, b = latent.interpolation_weights(z0, z1, 5, "slerp")
    assert (a.dtype, b.dtype) == (np.float32, np.float32)
    assert (a[0], b[0], a[-1], b[-1]) == (1.0, 0.0, 0.0, 1.0)
    assert a[2] == b[2] and a[2] > 0.5  # the middle of an arc lies outside the chord's


@pytest.mark.parametrize(
    "z1_of",
    [lambda z: z, lambda z: -z, lambda z: 2 * z, lambda z: np.zeros_like(z)],
    ids=["same", "opposite", "parallel", "zero"],
)
def test_slerp_is_lerp_where_the_angle_is_undefined(z1_of: Callable[[np.ndarray], np.ndarray]) -> None:
    z0 = latent.noise_for_seed(9, 100)
    z1 = z1_of(z0).astype(np.float32)
    slerp = latent.interpolate(z0, z1, 7, "slerp")
    assert np.isfinite(slerp).all()
    assert slerp.tobytes() == latent.interpolate(z0, z1, 7, "lerp").tobytes()


def test_zero_noise_at_an_end_is_lerp() -> None:
    z0 = np.zeros(100, dtype=np.float32)
    z1 = latent.noise_for_seed(9, 100)
    slerp = latent.interpolate(z0, z1, 5, "slerp")
    assert slerp.tobytes() == latent.interpolate(z0, z1, 5, "lerp").tobytes()
    assert slerp.tobytes() == documented_noise(z0, z1, 5, "slerp").tobytes()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda z: latent.interpolate(z, z, 1), "at least 2 steps"),
        (lambda z: latent.interpolate(z, z, 4, "cubic"), "method"),
        (lambda z: latent.interpolate(z, z[:4], 4), "one length"),
    ],
)
def test_bad_arguments_are_refused(call: Callable[[np.ndarray], Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(latent.noise_for_seed(0, 8))


# --- The route, through Flask's test client on the tiny models ---------------------------


def interpolate(client: FlaskClient, body: dict[str, Any]) -> Any:
    return client.post("/interpolate", json=body)


def pngs(response: Any) -> list[bytes]:
    assert response.status_code == 200, response.data
    return [base64.b64decode(s) for s in response.json["images"]]


def generate_pngs(client: FlaskClient, body: dict[str, Any]) -> list[bytes]:
    return pngs(client.post("/generate", json=body))


def npy(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.data
    assert response.mimetype == "application/x-npy"
    return np.load(io.BytesIO(response.data), allow_pickle=False)


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.data
    validate(response.json, ERROR_SCHEMA)
    assert (response.json["error"]["status"], response.json["error"]["code"]) == (status, code)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "model, labels", [("tiny", None), ("cond", None), ("cond", 2)], ids=["tiny", "cond", "cond-label"]
)
def test_first_and_last_frames_are_the_seeds_images_byte_for_byte(
    client: FlaskClient, model: str, labels: int | None, method: str
) -> None:
    a, b = 4, 2**63 - 1
    body: dict[str, Any] = {"model": model, "seeds": [a, b], "steps": 6, "method": method}
    one: dict[str, Any] = {"model": model}
    if labels is not None:
        body["labels"] = one["labels"] = labels
    frames = pngs(interpolate(client, body))
    assert frames[0] == generate_pngs(client, one | {"seeds": [a]})[0]
    assert frames[-1] == generate_pngs(client, one | {"seeds": [b]})[0]
    assert frames[0] != frames[-1]
    z = npy(interpolate(client, body | {"format": "npy"}))
    alone = npy(client.post("/generate", json=one | {"seeds": [a], "format": "npy"}))
    assert z[0].tobytes() == alone[0].tobytes()


@pytest.mark.parametrize("method", METHODS)
def test_frames_are_the_images_of_the_documented_noise(client: FlaskClient, method: str) -> None:
    for body, labels in [
        ({"model": "tiny", "seeds": [1, 2]}, None),
        ({"model": "cond", "seeds": [5, 6], "labels": [0, 1, 2, 0, 1, 2, 0, 1]}, [0, 1, 2, 0, 1, 2, 0, 1]),
    ]:
        z0, z1 = (latent.noise_for_seed(s, LATENT) for s in body["seeds"])
        noise = documented_noise(z0, z1, 8, method)
        request: dict[str, Any] = {"model": body["model"], "noise": noise.tolist(), "format": "npy"}
        if labels is not None:
            request["labels"] = labels
        expected = client.post("/generate", json=request)
        got = interpolate(client, body | {"steps": 8, "method": method, "format": "npy"})
        assert got.status_code == expected.status_code == 200
        assert got.data == expected.data


def test_noise_ends_give_the_same_frames_as_their_seeds(client: FlaskClient) -> None:
    ends = latent.noise_for_seeds([3, 8], LATENT).tolist()
    by_seeds = interpolate(client, {"model": "cond", "seeds": [3, 8], "labels": 1, "steps": 5})
    by_noise = interpolate(client, {"model": "cond", "noise": ends, "labels": 1, "steps": 5})
    assert pngs(by_seeds) == pngs(by_noise)
    assert by_noise.json["seeds"] is None and by_seeds.json["seeds"] == [3, 8]


def test_json_response(client: FlaskClient) -> None:
    response = interpolate(client, {"model": "cond", "seeds": [4, 8], "steps": 5, "method": "lerp"})
    assert response.status_code == 200
    validate(response.json, INTERPOLATE_RESPONSE_SCHEMA)
    body = response.json
    assert (body["model"], body["version"], body["method"], body["steps"]) == ("cond", 1, "lerp", 5)
    assert body["shape"] == [5, C, H, W] and body["seeds"] == [4, 8]
    assert body["t"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    # No labels: frames before t = 1/2 take seed 4's class, 4 % 3; the rest seed 8's, 8 % 3.
    assert body["labels"] == [1, 1, 2, 2, 2]
    assert interpolate(client, {"model": "cond", "seeds": [4, 8], "steps": 4}).json["labels"] == [1, 1, 2, 2]
    assert (response.headers["X-Model-Name"], response.headers["X-Model-Version"]) == ("cond", "1")
    for image in pngs(response):
        assert Image.open(io.BytesIO(image)).size == (W, H)


def test_defaults_are_eight_steps_of_slerp(client: FlaskClient) -> None:
    default = interpolate(client, {"seeds": [1, 2]})
    assert default.json["steps"] == 8 and default.json["method"] == "slerp"
    assert default.json["model"] == "tiny" and default.json["labels"] is None
    assert pngs(default) == pngs(interpolate(client, {"seeds": [1, 2], "steps": 8, "method": "slerp"}))
    lerp = pngs(interpolate(client, {"seeds": [1, 2], "method": "lerp"}))
    assert lerp[0] == pngs(default)[0] and lerp[3] != pngs(default)[3]


def test_png_is_one_strip_of_the_frames(client: FlaskClient) -> None:
    body = {"model": "cond", "seeds": [2, 9], "steps": 7}
    frames = [np.asarray(Image.open(io.BytesIO(p))) for p in pngs(interpolate(client, body))]
    response = interpolate(client, body | {"format": "png"})
    assert response.status_code == 200 and response.mimetype == "image/png"
    strip = np.array(Image.open(io.BytesIO(response.data)))
    pad = GRID_PADDING
    assert strip.shape == (H + 2 * pad, 7 * (W + pad) + pad)
    for i, frame in enumerate(frames):
        left = pad + i * (W + pad)
        assert np.array_equal(strip[pad : pad + H, left : left + W], frame)
        strip[pad : pad + H, left : left + W] = 0
    assert not strip.any()  # the padding is black


def test_npy_is_the_float32_frames(client: FlaskClient) -> None:
    images = npy(interpolate(client, {"model": "tiny", "seeds": [0, 1], "steps": 3, "format": "npy"}))
    assert images.dtype == np.float32 and images.shape == (3, C, H, W)
    assert ((images >= 0) & (images <= 1)).all()


def test_steps_up_to_the_sample_limit(client: FlaskClient) -> None:
    assert len(pngs(interpolate(client, {"seeds": [0, 1], "steps": 16}))) == 16
    assert_error(interpolate(client, {"seeds": [0, 1], "steps": 17}), 422, "too_many_samples")


def test_a_pinned_version(client: FlaskClient) -> None:
    v1 = interpolate(client, {"model": "tiny", "version": 1, "seeds": [0, 1], "steps": 2})
    assert v1.json["version"] == 1
    assert pngs(v1)[0] == generate_pngs(client, {"model": "tiny", "version": 1, "seeds": [0]})[0]
    assert pngs(v1)[0] != pngs(interpolate(client, {"model": "tiny", "seeds": [0, 1], "steps": 2}))[0]


NAN_BODY = '{"model": "cond", "noise": [[NaN, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]], "labels": 0}'


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({}, 422, "invalid_source"),
        ({"seeds": [1, 2], "noise": [[0.0] * LATENT] * 2}, 422, "invalid_source"),
        ({"seeds": [1]}, 422, "too_few_items"),
        ({"seeds": [1, 2, 3]}, 422, "too_many_items"),
        ({"seeds": [-1, 2]}, 422, "seed_out_of_range"),
        ({"seeds": [1, 2**63]}, 422, "seed_out_of_range"),
        ({"seeds": [1, "2"]}, 400, "invalid_type"),
        ({"seeds": [1, 2], "steps": 1}, 422, "out_of_range"),
        ({"seeds": [1, 2], "steps": 2.5}, 400, "invalid_type"),
        ({"seeds": [1, 2], "method": "cubic"}, 422, "invalid_value"),
        ({"seeds": [1, 2], "format": "gif"}, 422, "invalid_value"),
        ({"seeds": [1, 2], "n": 3}, 422, "unknown_field"),
        ({"seeds": [1, 2], "model": "nope"}, 404, "unknown_model"),
        ({"seeds": [1, 2], "model": "tiny", "version": 9}, 404, "unknown_version"),
        ({"seeds": [1, 2], "model": "tiny", "labels": 0}, 422, "labels_not_supported"),
        ({"seeds": [1, 2], "model": "cond", "labels": K}, 422, "label_out_of_range"),
        ({"seeds": [1, 2], "model": "cond", "labels": [0, 1]}, 422, "invalid_labels_count"),
        ({"noise": [[0.0] * LATENT] * 2, "model": "cond"}, 422, "labels_required"),
        ({"noise": [[0.0] * LATENT, [0.0] * (LATENT - 1)]}, 422, "invalid_noise_shape"),
        ({"noise": [[0.0] * 3] * 2}, 422, "invalid_noise_shape"),
        ({"noise": [[0.0] * LATENT]}, 422, "too_few_items"),
        ({"noise": [[1e39] * LATENT] * 2}, 422, "non_finite_noise"),
    ],
)
def test_errors(client: FlaskClient, body: dict[str, Any], status: int, code: str) -> None:
    assert_error(interpolate(client, body), status, code)


@pytest.mark.parametrize(
    "data, content_type, status, code",
    [
        (NAN_BODY, "application/json", 422, "non_finite_noise"),
        ('{"seeds": [1, 2], "seeds": [3, 4]}', "application/json", 422, "duplicate_field"),
        ('{"seeds": [1, 2]', "application/json", 400, "malformed_json"),
        ('{"seeds": [1, 2]}', "text/plain", 415, "unsupported_media_type"),
    ],
)
def test_body_errors(client: FlaskClient, data: str, content_type: str, status: int, code: str) -> None:
    response = client.post("/interpolate", data=data, content_type=content_type)
    assert_error(response, status, code)


def test_only_post(client: FlaskClient) -> None:
    response = client.get("/interpolate")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_images_are_counted_in_the_metrics(client: FlaskClient) -> None:
    def counted() -> float:
        text = client.get("/metrics").get_data(as_text=True)
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            if family.name == "gan_images_generated"
            for s in family.samples
            if s.name.endswith("_total") and s.labels.get("model") == "cond"
        )

    before = counted()
    assert interpolate(client, {"model": "cond", "seeds": [1, 2], "steps": 5}).status_code == 200
    assert counted() == before + 5


def test_openapi_documents_the_route(app: Flask, client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    validate_openapi(spec)
    operation = spec["paths"]["/interpolate"]["post"]
    ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/InterpolateRequest"
    assert spec["components"]["schemas"]["InterpolateRequest"] == interpolate_request_schema(16)
    assert spec["components"]["schemas"]["InterpolateRequest"]["properties"]["steps"]["maximum"] == 16
    formats = set(operation["responses"]["200"]["content"])
    assert formats == {"application/json", "image/png", "application/x-npy"}
    assert {"404", "413", "415", "422"} <= set(operation["responses"])


# --- Through gunicorn: the same bytes from every worker ----------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, gunicorn: Callable[..., Server]) -> Server:
    repo = write_repository(tmp_path_factory.mktemp("interpolate") / "models")
    return gunicorn(GAN_MODELS_DIR=str(repo), GAN_WORKERS="2", GAN_DEFAULT_MODEL="tiny",
                    GAN_ACCESS_LOG="off")


def test_same_bytes_from_every_worker(server: Server) -> None:
    body = {"model": "cond", "seeds": [17, 2**40], "steps": 9, "format": "png"}
    seen: dict[str, set[bytes]] = {}
    for _ in range(SPREAD_ATTEMPTS):
        response = requests.post(f"{server.url}/interpolate", json=body, timeout=30,
                                 headers={"Connection": "close"})
        assert response.status_code == 200
        seen.setdefault(response.headers["X-Worker-Pid"], set()).add(response.content)
        if len(seen) == 2:
            break
    assert len(seen) == 2, f"only worker {list(seen)} answered {SPREAD_ATTEMPTS} requests"
    assert len(set().union(*seen.values())) == 1


def test_ends_match_generate_through_gunicorn(server: Server) -> None:
    body = {"model": "cond", "seeds": [30, 31], "steps": 4, "method": "lerp"}
    frames = requests.post(f"{server.url}/interpolate", json=body, timeout=30).json()["images"]
    for seed, frame in ((30, frames[0]), (31, frames[-1])):
        one = requests.post(f"{server.url}/generate", json={"model": "cond", "seeds": [seed]}, timeout=30)
        assert one.json()["images"][0] == frame


def test_errors_through_gunicorn(server: Server) -> None:
    response = requests.post(f"{server.url}/interpolate", json={"seeds": [1]}, timeout=30)
    assert response.status_code == 422 and response.json()["error"]["code"] == "too_few_items"


def test_the_documented_code_is_the_definition() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text(encoding="utf-8")
    section = text.split("### `POST /interpolate`", 1)[1].split("\n### ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # the docs' own snippet, as a client would paste it
    for method in METHODS:
        for a, b, steps in [(3, 10, 12), (0, 2**63 - 1, 2), (5, 5, 7)]:
            z0, z1 = latent.noise_for_seed(a, 100), latent.noise_for_seed(b, 100)
            documented = namespace["interpolate"](z0, z1, steps, method)
            assert documented.dtype == np.float32
            assert documented.tobytes() == latent.interpolate(z0, z1, steps, method).tobytes()
