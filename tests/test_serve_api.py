"""The HTTP contract through Flask's test client: every endpoint, format and error class."""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from helpers.openapi import assert_matches_openapi, assert_matches_schema
from helpers.tiny_models import CLASSES, LATENT, SHAPE, edit_json
from PIL import Image

from serve import latent
from serve.app import create_app
from serve.imaging import GRID_PADDING, grid_shape
from serve.openapi import (
    ERROR_SCHEMA,
)

C, H, W = SHAPE


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes to a uint8 array [H, W] (grayscale)."""
    image = Image.open(io.BytesIO(data))
    assert image.mode == "L"
    return np.asarray(image)


def images_of(response: Any) -> list[bytes]:
    """The PNG bytes of a JSON generate response."""
    return [base64.b64decode(s) for s in response.json["images"]]


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """The response is the JSON error of ``status`` and ``code``; returns the error object."""
    assert response.status_code == status, response.data
    assert response.mimetype == "application/json"
    assert_matches_schema(response.json, ERROR_SCHEMA)
    assert response.json["error"]["status"] == status
    assert response.json["error"]["code"] == code
    return response.json["error"]


def test_healthz_reports_the_worker_pid(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert_matches_openapi(client, response, "/healthz")
    assert response.json["pid"] == os.getpid()
    assert response.headers["X-Worker-Pid"] == str(os.getpid())


def test_readyz_lists_the_models(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert_matches_openapi(client, response, "/readyz")
    assert response.json["models"] == ["cond", "tiny"]


def test_models_lists_versions_and_default(client: FlaskClient) -> None:
    response = client.get("/models")
    assert response.status_code == 200
    assert_matches_openapi(client, response, "/models")
    assert response.json["default"] == "tiny"
    models = {m["name"]: m for m in response.json["models"]}
    assert models["tiny"]["versions"] == [1, 2]
    assert models["tiny"]["default_version"] == 2
    assert models["tiny"]["conditional"] is False
    assert models["tiny"]["image_shape"] == [C, H, W]
    assert models["tiny"]["latent_size"] == LATENT
    assert models["cond"]["classes"] == CLASSES


def test_default_model_is_the_first_by_name_without_setting(models_dir: Path) -> None:
    client = create_app({"GAN_MODELS_DIR": str(models_dir)}).test_client()
    assert client.get("/models").json["default"] == "cond"


def test_model_detail_has_every_versions_metadata(client: FlaskClient) -> None:
    response = client.get("/models/tiny")
    assert response.status_code == 200
    assert_matches_openapi(client, response, "/models/{name}")
    assert [m["version"] for m in response.json["metadata"]] == [1, 2]
    assert response.json["metadata"][0]["onnx"]["opset"] == 17


def test_model_detail_of_unknown_model_is_404(client: FlaskClient) -> None:
    assert_error(client.get("/models/nope"), 404, "unknown_model")


TRAINING_RECORD = {
    "config": {"data": "/home/me/datasets/mnist", "out": "runs/tiny-7", "epochs": 2},
    "command": "python -m train fit --data /home/me/datasets/mnist --out=runs/tiny-7 --epochs 2",
    "resumed": ["python -m train fit --out 'runs/tiny 7' --resume"],
}


def test_model_detail_hides_local_paths_unless_told_to_show_them(models_dir: Path) -> None:
    edit_json(models_dir / "tiny" / "1", lambda meta: meta.update(
        training=TRAINING_RECORD, metrics={"generator": "runs/tiny-7", "fid": 1.5}
    ))
    settings = {"GAN_MODELS_DIR": str(models_dir), "GAN_RELOAD_INTERVAL": "0"}
    hidden = create_app(settings).test_client().get("/models/tiny").json["metadata"][0]
    assert hidden["training"] == {
        "config": {"data": "<hidden>", "out": "<hidden>", "epochs": 2},
        "command": "python -m train fit --data <hidden> --out=<hidden> --epochs 2",
        "resumed": ["python -m train fit --out <hidden> --resume"],
    }
    assert hidden["metrics"] == {"generator": "<hidden>", "fid": 1.5}
    assert hidden["classes"] is None and hidden["onnx"]["file"] == "model.onnx"
    shown = create_app(settings | {"GAN_SHOW_PATHS": "on"}).test_client().get("/models/tiny")
    assert shown.json["metadata"][0]["training"] == TRAINING_RECORD


def test_generate_json_from_seeds(client: FlaskClient) -> None:
    response = client.post("/generate", json={"seeds": [3, 1, 4]})
    assert response.status_code == 200
    assert_matches_openapi(client, response, "/generate", "post")
    body = response.json
    assert body["model"] == "tiny" and body["version"] == 2
    assert body["seeds"] == [3, 1, 4] and body["labels"] is None
    assert body["shape"] == [3, C, H, W]
    assert [decode_png(png).shape for png in images_of(response)] == [(H, W)] * 3
    assert response.headers["X-Model-Name"] == "tiny"
    assert response.headers["X-Model-Version"] == "2"


def test_seed_and_n_mean_consecutive_seeds(client: FlaskClient) -> None:
    by_range = client.post("/generate", json={"seed": 5, "n": 3})
    by_list = client.post("/generate", json={"seeds": [5, 6, 7]})
    assert by_range.json["seeds"] == [5, 6, 7]
    assert images_of(by_range) == images_of(by_list)
    assert len(set(images_of(by_range))) == 3


def test_seed_alone_is_one_sample(client: FlaskClient) -> None:
    assert client.post("/generate", json={"seed": 5}).json["seeds"] == [5]


def test_noise_rebuilt_by_the_client_gives_the_seeds_image(client: FlaskClient) -> None:
    # The documented latent spec: a client can rebuild z from a seed with numpy alone.
    z = np.random.Generator(np.random.PCG64(42)).standard_normal(LATENT, dtype=np.float32)
    from_noise = client.post("/generate", json={"noise": [z.tolist()]})
    from_seed = client.post("/generate", json={"seeds": [42]})
    assert from_noise.status_code == 200
    assert from_noise.json["seeds"] is None
    assert images_of(from_noise) == images_of(from_seed)


def test_version_selects_the_model_version(client: FlaskClient) -> None:
    v1 = client.post("/generate", json={"seeds": [1], "version": 1})
    v2 = client.post("/generate", json={"seeds": [1]})
    assert v1.headers["X-Model-Version"] == "1" and v1.json["version"] == 1
    assert images_of(v1) != images_of(v2)


def test_png_format_is_a_grid_of_the_json_tiles(client: FlaskClient) -> None:
    tiles = [decode_png(p) for p in images_of(client.post("/generate", json={"seed": 0, "n": 5}))]
    response = client.post("/generate", json={"seed": 0, "n": 5, "format": "png"})
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    assert response.headers["X-Model-Name"] == "tiny"
    grid = decode_png(response.data)
    nrow, ncol = grid_shape(5)
    assert (nrow, ncol) == (2, 3)
    pad = GRID_PADDING
    assert grid.shape == (nrow * (H + pad) + pad, ncol * (W + pad) + pad)
    for i, tile in enumerate(tiles):
        top, left = pad + (i // ncol) * (H + pad), pad + (i % ncol) * (W + pad)
        assert np.array_equal(grid[top : top + H, left : left + W], tile)
    assert not grid[:pad].any() and not grid[:, :pad].any()  # border is padding
    last = pad + 2 * (W + pad)
    assert not grid[H + 2 * pad :, last:].any()  # the unused sixth cell stays empty


def test_npy_format_is_the_float_output(client: FlaskClient) -> None:
    response = client.post("/generate", json={"seeds": [1, 2], "format": "npy"})
    assert response.status_code == 200
    assert response.mimetype == "application/x-npy"
    array = np.load(io.BytesIO(response.data), allow_pickle=False)
    assert array.dtype == np.float32 and array.shape == (2, C, H, W)
    assert ((array >= 0) & (array <= 1)).all()
    tiles = [decode_png(p) for p in images_of(client.post("/generate", json={"seeds": [1, 2]}))]
    assert np.array_equal(np.rint(array[:, 0] * 255).astype(np.uint8), np.stack(tiles))


def test_get_generate_returns_the_png_grid(client: FlaskClient) -> None:
    got = client.get("/generate?seed=4&n=3&version=1")
    posted = client.post("/generate", json={"seed": 4, "n": 3, "version": 1, "format": "png"})
    assert got.status_code == 200 and got.mimetype == "image/png"
    assert got.headers["X-Model-Version"] == "1"
    assert got.data == posted.data


def test_conditional_labels_one_for_all_or_one_each(client: FlaskClient) -> None:
    one = client.post("/generate", json={"model": "cond", "seeds": [1, 2], "labels": 2})
    each = client.post("/generate", json={"model": "cond", "seeds": [1, 2], "labels": [2, 2]})
    other = client.post("/generate", json={"model": "cond", "seeds": [1, 2], "labels": [0, 1]})
    assert one.status_code == 200 and one.json["labels"] == [2, 2]
    assert images_of(one) == images_of(each)
    assert images_of(one)[0] != images_of(other)[0]
    got = client.get("/generate?model=cond&seed=1&n=2&labels=2,2")
    assert got.status_code == 200
    assert got.data == client.post(
        "/generate", json={"model": "cond", "seed": 1, "n": 2, "labels": 2, "format": "png"}
    ).data


def test_conditional_seeds_without_labels_take_seed_mod_classes(client: FlaskClient) -> None:
    seeds = [0, 1, 2, 3, 7, 2**63 - 1]
    implicit = client.post("/generate", json={"model": "cond", "seeds": seeds})
    assert implicit.status_code == 200
    want = [s % len(CLASSES) for s in seeds]
    assert implicit.json["labels"] == want
    explicit = client.post("/generate", json={"model": "cond", "seeds": seeds, "labels": want})
    assert images_of(implicit) == images_of(explicit)
    # A seed's image is still its own: alone, or in a range of any length.
    alone = client.post("/generate", json={"model": "cond", "seeds": [7]})
    assert images_of(alone)[0] == images_of(implicit)[4]
    grid = client.get("/generate?model=cond&seed=0&n=4")
    assert grid.status_code == 200
    assert grid.data == client.post(
        "/generate", json={"model": "cond", "seed": 0, "n": 4, "labels": [0, 1, 2, 0], "format": "png"}
    ).data


def test_unknown_route_is_json_404(client: FlaskClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")


def test_wrong_method_is_json_405_with_allow(client: FlaskClient) -> None:
    response = client.delete("/generate")
    assert_error(response, 405, "method_not_allowed")
    assert {"GET", "POST"} <= set(response.headers["Allow"].split(", "))


def test_wrong_content_type_is_415(client: FlaskClient) -> None:
    response = client.post("/generate", data='{"seed": 1}', content_type="text/plain")
    assert_error(response, 415, "unsupported_media_type")
    assert_error(client.post("/generate", data='{"seed": 1}'), 415, "unsupported_media_type")


def test_body_over_the_limit_is_413(client: FlaskClient) -> None:
    body = b'{"seeds": [' + b"1, " * 30000 + b"1]}"
    assert_error(client.post("/generate", data=body, content_type="application/json"), 413,
                 "body_too_large")


def test_an_emptied_repository_is_taken_for_an_unavailable_one(
    app: Flask, models_dir: Path
) -> None:
    """A mount point seen empty while its volume is remounted: the loaded models stay."""
    for model in models_dir.iterdir():
        shutil.rmtree(model)
    app.extensions["gan"].registry.reload()
    client = app.test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json["repository"] == "unavailable"
    assert client.post("/generate", json={"seed": 1}).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_a_bug_is_a_json_500(app: Flask) -> None:
    def broken() -> str:
        raise RuntimeError("bug")

    app.add_url_rule("/broken", view_func=broken)
    assert_error(app.test_client().get("/broken"), 500, "internal_error")


NOISE_OK = [[0.0] * LATENT]

POST_ERRORS = [
    # (body, status, code, a fragment of the message)
    ('{"seed": 1', 400, "malformed_json", "not valid JSON"),
    (b'\xff\xfe', 400, "malformed_json", "not valid JSON"),
    ("[1, 2]", 400, "invalid_type", "request body must be an object"),
    ('{"seeds": [1, "2"]}', 400, "invalid_type", "seeds[1] must be an integer"),
    ('{"seeds": [1.5]}', 400, "invalid_type", "seeds[0] must be an integer"),
    ('{"seed": true}', 400, "invalid_type", "seed must be an integer"),
    ('{"seed": 1, "n": "2"}', 400, "invalid_type", "n must be an integer"),
    ('{"noise": [[0, "x"]]}', 400, "invalid_type", "noise[0][1] must be a number"),
    ('{"noise": [1, 2]}', 400, "invalid_type", "noise[0] must be an array"),
    ('{"seed": 1, "model": 3}', 400, "invalid_type", "model must be a string"),
    ('{"seed": 1, "version": "2"}', 400, "invalid_type", "version must be an integer"),
    ('{"model": "cond", "seed": 1, "labels": "a"}', 400, "invalid_type", "labels must be"),
    ("{}", 422, "invalid_source", "exactly one of"),
    ('{"seed": 1, "seeds": [1]}', 422, "invalid_source", "exactly one of"),
    ('{"n": 2}', 422, "missing_field", "'n' needs field 'seed'"),
    ('{"seed": 1, "colour": "red"}', 422, "unknown_field", "unknown field 'colour'"),
    ('{"seed": 1, "seed": 2}', 422, "duplicate_field", "'seed' appears more than once"),
    ('{"seed": 1, "n": 17}', 422, "too_many_samples", "n must be <= 16"),
    ('{"seed": 1, "n": 0}', 422, "out_of_range", "n must be >= 1"),
    ('{"seeds": []}', 422, "too_few_items", "at least 1"),
    ('{"seeds": [' + ", ".join(["1"] * 17) + "]}", 422, "too_many_samples", "at most 16"),
    ('{"seeds": [-1]}', 422, "seed_out_of_range", "seeds[0] must be >= 0"),
    ('{"seeds": [9223372036854775808]}', 422, "seed_out_of_range", "<= 9223372036854775807"),
    ('{"seed": 9223372036854775807, "n": 2}', 422, "seed_out_of_range", "exceeds 2**63 - 1"),
    ('{"seed": 1, "format": "gif"}', 422, "invalid_value", "format must be one of"),
    ('{"seed": 1, "version": 0}', 422, "out_of_range", "version must be >= 1"),
    ('{"noise": [[0, 0]]}', 422, "invalid_noise_shape", f"noise must have shape [n, {LATENT}]"),
    ('{"noise": [[0, 0], [0]]}', 422, "invalid_noise_shape", "rows of unequal length"),
    ('{"noise": []}', 422, "too_few_items", "at least 1"),
    ('{"noise": [[NaN, 0, 0, 0, 0, 0, 0, 0]]}', 422, "non_finite_noise", "finite"),
    ('{"noise": [[Infinity, 0, 0, 0, 0, 0, 0, 0]]}', 422, "non_finite_noise", "finite"),
    ('{"noise": [[1e39, 0, 0, 0, 0, 0, 0, 0]]}', 422, "non_finite_noise", "finite"),
    # An integer literal beyond even float64 once raised OverflowError: a 500.
    ('{"noise": [[1' + "0" * 400 + ', 0, 0, 0, 0, 0, 0, 0]]}', 422, "non_finite_noise", "finite"),
    # Deep in a long row of plain numbers (the validator's fast path falls back to find it).
    ('{"noise": [' + ", ".join(["[0, 0, 0, 0, 0, 0, 0, 0]"] * 15) + ', [0, 0, 0, 0, 0, 0, false, 0]]}',
     400, "invalid_type", "noise[15][6] must be a number, got boolean"),
    ('{"model": "cond", "noise": [[0, 0, 0, 0, 0, 0, 0, 0]]}', 422, "labels_required", "give `labels`"),
    ('{"model": "cond", "seed": 1, "labels": 3}', 422, "label_out_of_range", "[0, 3)"),
    ('{"model": "cond", "seed": 1, "labels": -1}', 422, "label_out_of_range", ">= 0"),
    ('{"model": "cond", "seed": 1, "n": 2, "labels": [0]}', 422, "invalid_labels_count", "(2)"),
    ('{"seed": 1, "labels": 0}', 422, "labels_not_supported", "not conditional"),
    ('{"model": "nope", "seed": 1}', 404, "unknown_model", "unknown model 'nope'"),
    ('{"seed": 1, "version": 9}', 404, "unknown_version", "no version 9"),
]


@pytest.mark.parametrize(("body", "status", "code", "fragment"), POST_ERRORS)
def test_post_generate_errors(
    client: FlaskClient, body: str | bytes, status: int, code: str, fragment: str
) -> None:
    response = client.post("/generate", data=body, content_type="application/json")
    assert fragment in assert_error(response, status, code)["message"]


GET_ERRORS = [
    ("", 422, "missing_field", "missing field 'seed'"),
    ("seed=x", 400, "invalid_type", "seed must be an integer"),
    ("seed=1&n=2.5", 400, "invalid_type", "n must be an integer, got number"),
    ("seed=1&labels=1,x&model=cond", 400, "invalid_type", "labels[1] must be an integer"),
    ("seed=1&seed=2", 422, "duplicate_field", "'seed' appears more than once"),
    ("seed=1&size=3", 422, "unknown_field", "unknown field 'size'"),
    ("seed=1&n=17", 422, "too_many_samples", "n must be <= 16"),
    ("seed=-1", 422, "seed_out_of_range", "seed must be >= 0"),
    ("seed=" + "9" * 30, 422, "seed_out_of_range", "seed must be <= 9223372036854775807"),
    ("seed=" + "9" * 5000, 422, "seed_out_of_range", "seed must be <= 9223372036854775807"),
    ("seed=1&model=cond&labels=7", 422, "label_out_of_range", "[0, 3)"),
    ("seed=1&model=nope", 404, "unknown_model", "nope"),
    ("seed=1&version=3", 404, "unknown_version", "no version 3"),
]


@pytest.mark.parametrize(("query", "status", "code", "fragment"), GET_ERRORS)
def test_get_generate_errors(
    client: FlaskClient, query: str, status: int, code: str, fragment: str
) -> None:
    response = client.get(f"/generate?{query}")
    assert fragment in assert_error(response, status, code)["message"]


def test_max_samples_is_accepted(client: FlaskClient) -> None:
    response = client.post("/generate", json={"seed": 0, "n": 16})
    assert response.status_code == 200 and response.json["shape"][0] == 16


def test_largest_seed_is_accepted(client: FlaskClient) -> None:
    response = client.post("/generate", json={"seeds": [latent.SEED_MAX, 0]})
    assert response.status_code == 200


def test_noise_far_out_is_still_an_image(client: FlaskClient) -> None:
    response = client.post("/generate", json={"noise": [[3e38] * LATENT, NOISE_OK[0]]})
    assert response.status_code == 200
    assert len(images_of(response)) == 2
