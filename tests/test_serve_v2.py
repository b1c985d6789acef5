"""The Open Inference Protocol v2 routes: the official client against real gunicorn, and the
edge cases through Flask's test client."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from flask import Flask
from flask.testing import FlaskClient
from helpers.openapi import assert_matches_schemas
from helpers.server import Server
from helpers.tiny_models import CLASSES, LATENT, SHAPE, write_repository
from openapi_spec_validator import validate as validate_openapi
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from serve import latent
from serve.openapi import V2_SCHEMAS

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_SAMPLES = 16
MAX_BODY = 65536


def noise(n: int, first_seed: int = 0) -> np.ndarray:
    return latent.noise_for_seeds(range(first_seed, first_seed + n), LATENT)


# --- The official client against gunicorn --------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, gunicorn: Callable[..., Server]) -> Server:
    repo = write_repository(tmp_path_factory.mktemp("v2") / "models")
    return gunicorn(
        GAN_MODELS_DIR=str(repo), GAN_WORKERS="1", GAN_DEFAULT_MODEL="tiny",
        GAN_MAX_SAMPLES=str(MAX_SAMPLES), GAN_MAX_BODY_BYTES=str(MAX_BODY),
        GAN_RELOAD_INTERVAL="0",
    )


@pytest.fixture(scope="module")
def triton(server: Server) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


def npy_images(server: Server, body: dict[str, Any]) -> np.ndarray:
    """What POST /generate returns as format npy for ``body``."""
    response = requests.post(
        f"{server.url}/generate", json=body | {"format": "npy"}, timeout=30
    )
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content))


def z_input(z: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput("z", list(z.shape), "FP32")
    tensor.set_data_from_numpy(z, binary_data=binary)
    return tensor


def labels_input(labels: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput("labels", list(labels.shape), "INT64")
    tensor.set_data_from_numpy(labels, binary_data=binary)
    return tensor


def test_health(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("tiny")
    assert triton.is_model_ready("tiny", "1")
    assert triton.is_model_ready("cond")
    assert not triton.is_model_ready("nope")
    assert not triton.is_model_ready("tiny", "9")


def test_server_metadata(triton: httpclient.InferenceServerClient) -> None:
    metadata = triton.get_server_metadata()
    assert_matches_schemas(metadata, V2_SCHEMAS, "V2ServerMetadata")
    assert metadata["name"] == "gan-serve"
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_metadata(triton: httpclient.InferenceServerClient) -> None:
    tiny = triton.get_model_metadata("tiny")
    assert_matches_schemas(tiny, V2_SCHEMAS, "V2ModelMetadata")
    assert tiny == {
        "name": "tiny",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "z", "datatype": "FP32", "shape": [-1, LATENT]}],
        "outputs": [{"name": "images", "datatype": "FP32", "shape": [-1, *SHAPE]}],
    }
    assert triton.get_model_metadata("tiny", "1") == tiny
    cond = triton.get_model_metadata("cond")
    assert cond["inputs"] == [
        {"name": "z", "datatype": "FP32", "shape": [-1, LATENT]},
        {"name": "labels", "datatype": "INT64", "shape": [-1]},
    ]
    with pytest.raises(InferenceServerException) as e:
        triton.get_model_metadata("nope")
    assert e.value.status() == "404"
    assert "unknown model" in e.value.message()


def test_infer_binary_equals_generate_npy(
    server: Server, triton: httpclient.InferenceServerClient
) -> None:
    z = noise(5)
    result = triton.infer("tiny", [z_input(z)], request_id="req-1")
    images = result.as_numpy("images")
    response = result.get_response()
    assert response["model_name"] == "tiny"
    assert response["model_version"] == "2"
    assert response["id"] == "req-1"
    assert response["outputs"][0]["parameters"]["binary_data_size"] == images.nbytes
    expected = npy_images(server, {"model": "tiny", "noise": z.tolist()})
    assert images.dtype == np.float32 and images.shape == (5, *SHAPE)
    assert images.tobytes() == expected.tobytes()
    # Seeds and the noise they stand for are the same images on v2 too.
    assert images.tobytes() == npy_images(server, {"seeds": [0, 1, 2, 3, 4]}).tobytes()


def test_infer_json_tensors(server: Server, triton: httpclient.InferenceServerClient) -> None:
    z = noise(3, 10)
    outputs = [httpclient.InferRequestedOutput("images", binary_data=False)]
    result = triton.infer("tiny", [z_input(z, binary=False)], outputs=outputs)
    assert "data" in result.get_response()["outputs"][0]
    images = result.as_numpy("images")
    assert images.shape == (3, *SHAPE)
    assert images.astype(np.float32).tobytes() == npy_images(server, {"noise": z.tolist()}).tobytes()


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("column", [False, True])
def test_infer_with_labels(
    server: Server, triton: httpclient.InferenceServerClient, binary: bool, column: bool
) -> None:
    z = noise(4, 20)
    labels = np.array([2, 0, 1, 2], dtype=np.int64)
    sent = labels.reshape(-1, 1) if column else labels  # Triton's batching sends [n, 1]
    result = triton.infer("cond", [z_input(z, binary), labels_input(sent, binary)])
    expected = npy_images(server, {"model": "cond", "noise": z.tolist(), "labels": labels.tolist()})
    assert result.as_numpy("images").tobytes() == expected.tobytes()


def test_infer_without_labels_on_a_conditional_model(
    triton: httpclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as e:
        triton.infer("cond", [z_input(noise(2))])
    assert e.value.status() == "400"
    assert "labels" in e.value.message()


def test_infer_pinned_version(server: Server, triton: httpclient.InferenceServerClient) -> None:
    z = noise(2, 30)
    result = triton.infer("tiny", [z_input(z)], model_version="1")
    assert result.get_response()["model_version"] == "1"
    expected = npy_images(server, {"model": "tiny", "version": 1, "noise": z.tolist()})
    assert result.as_numpy("images").tobytes() == expected.tobytes()
    latest = triton.infer("tiny", [z_input(z)]).as_numpy("images")
    assert latest.tobytes() != expected.tobytes()


def test_infer_unknown_model_and_version(triton: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as e:
        triton.infer("nope", [z_input(noise(1))])
    assert e.value.status() == "404"
    assert "unknown model 'nope'" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        triton.infer("tiny", [z_input(noise(1))], model_version="9")
    assert e.value.status() == "404"
    assert "no version 9" in e.value.message()


def test_infer_wrong_shape(triton: httpclient.InferenceServerClient) -> None:
    z = np.zeros((2, LATENT - 1), dtype=np.float32)
    with pytest.raises(InferenceServerException) as e:
        triton.infer("tiny", [z_input(z)])
    assert e.value.status() == "400"
    assert f"[n, {LATENT}]" in e.value.message()


def test_infer_wrong_datatype(triton: httpclient.InferenceServerClient) -> None:
    tensor = httpclient.InferInput("z", [1, LATENT], "FP64")
    tensor.set_data_from_numpy(noise(1).astype(np.float64))
    with pytest.raises(InferenceServerException) as e:
        triton.infer("tiny", [tensor])
    assert e.value.status() == "400"
    assert "FP32" in e.value.message()


def test_infer_too_many_samples(triton: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as e:
        triton.infer("tiny", [z_input(noise(MAX_SAMPLES + 1))])
    assert e.value.status() == "400"
    assert "GAN_MAX_SAMPLES" in e.value.message()


def test_body_over_the_limit_is_a_413_from_the_worker(
    server: Server, triton: httpclient.InferenceServerClient
) -> None:
    """The worker refuses it by Content-Length before the app, in the protocol's error shape."""
    z = np.zeros((MAX_BODY // (4 * LATENT) + 1, LATENT), dtype=np.float32)
    with pytest.raises(InferenceServerException) as e:
        triton.infer("tiny", [z_input(z)])
    assert e.value.status() == "413"
    assert f"larger than {MAX_BODY} bytes" in str(e.value)  # a string the client can print
    head = json.dumps(
        {"inputs": [{"name": "z", "shape": list(z.shape), "datatype": "FP32",
                     "parameters": {"binary_data_size": z.nbytes}}]}
    ).encode()
    response = requests.post(
        f"{server.url}/v2/models/tiny/infer", data=head + z.tobytes(),
        headers={HEADER_LENGTH: str(len(head))}, timeout=30,
    )
    assert response.status_code == 413
    assert response.json() == {"error": f"request body larger than {MAX_BODY} bytes"}
    # Outside /v2 the same refusal keeps the service's own error shape.
    other = requests.post(f"{server.url}/generate", data=b"x" * (MAX_BODY + 1), timeout=30,
                          headers={"Content-Type": "application/json"})
    assert other.status_code == 413 and other.json()["error"]["code"] == "body_too_large"


# --- Edge cases through Flask's test client ------------------------------------------------


def infer(
    client: FlaskClient, request: dict[str, Any], binary: bytes = b"", model: str = "tiny",
    header_length: str | None = None, **headers: str,
) -> Any:
    """POST an inference request: JSON, then ``binary`` (with its header length) if any."""
    head = json.dumps(request).encode()
    if binary or header_length is not None:
        headers[HEADER_LENGTH] = header_length if header_length is not None else str(len(head))
    return client.post(f"/v2/models/{model}/infer", data=head + binary, headers=headers)


def z_json(z: np.ndarray, nested: bool = False) -> dict[str, Any]:
    data = z.tolist() if nested else z.ravel().tolist()
    return {"name": "z", "shape": list(z.shape), "datatype": "FP32", "data": data}


def z_binary(z: np.ndarray, size: int | None = None) -> dict[str, Any]:
    return {
        "name": "z", "shape": list(z.shape), "datatype": "FP32",
        "parameters": {"binary_data_size": z.nbytes if size is None else size},
    }


def assert_v2_error(response: Any, status: int, *words: str) -> str:
    """A v2 error: ``status``, JSON ``{"error": "<message>"}`` naming ``words``."""
    assert response.status_code == status, response.data
    assert response.mimetype == "application/json"
    assert_matches_schemas(response.json, V2_SCHEMAS, "V2Error")
    assert set(response.json) == {"error"}
    message = response.json["error"]
    for word in words:
        assert word in message, message
    return message


def generate_npy(client: FlaskClient, body: dict[str, Any]) -> np.ndarray:
    response = client.post("/generate", json=body | {"format": "npy"})
    assert response.status_code == 200, response.data
    return np.load(io.BytesIO(response.data))


def binary_images(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.data
    assert response.mimetype == "application/octet-stream"
    length = int(response.headers[HEADER_LENGTH])
    head = json.loads(response.data[:length])
    output = head["outputs"][0]
    assert output["parameters"]["binary_data_size"] == len(response.data) - length
    return np.frombuffer(response.data[length:], dtype="<f4").reshape(output["shape"])


def test_json_and_binary_outputs_equal_generate_npy(client: FlaskClient) -> None:
    z = noise(MAX_SAMPLES, 40)  # a full batch: the batching rule applies as for /generate
    expected = generate_npy(client, {"noise": z.tolist()}).tobytes()
    flat = infer(client, {"inputs": [z_json(z)]})
    assert flat.status_code == 200 and flat.mimetype == "application/json"
    assert HEADER_LENGTH not in flat.headers
    assert_matches_schemas(flat.json, V2_SCHEMAS, "V2InferResponse")
    assert flat.json["outputs"][0]["shape"] == [MAX_SAMPLES, *SHAPE]
    assert np.asarray(flat.json["outputs"][0]["data"], dtype=np.float32).tobytes() == expected
    nested = infer(client, {"inputs": [z_json(z, nested=True)]})
    assert nested.json["outputs"] == flat.json["outputs"]
    binary = infer(client, {"inputs": [z_binary(z)], "parameters": {"binary_data_output": True}},
                   z.tobytes())
    assert binary_images(binary).tobytes() == expected
    assert binary.headers["X-Model-Name"] == "tiny" and binary.headers["X-Model-Version"] == "2"
    # The output's own flag wins over the request's.
    per_output = infer(client, {"inputs": [z_json(z)], "parameters": {"binary_data_output": False},
                                "outputs": [{"name": "images", "parameters": {"binary_data": True}}]})
    assert binary_images(per_output).tobytes() == expected


def test_no_content_type_and_octet_stream_are_accepted(client: FlaskClient) -> None:
    z = noise(2)
    head = json.dumps({"inputs": [z_binary(z)]}).encode()
    for content_type in (None, "application/octet-stream", "application/json"):
        headers = {HEADER_LENGTH: str(len(head))}
        if content_type:
            headers["Content-Type"] = content_type
        response = client.post("/v2/models/tiny/infer", data=head + z.tobytes(), headers=headers)
        assert response.status_code == 200, (content_type, response.data)


def test_labels_json_shapes(client: FlaskClient) -> None:
    z = noise(3, 50)
    expected = generate_npy(client, {"model": "cond", "noise": z.tolist(), "labels": [1, 2, 0]})
    for shape, data in (([3], [1, 2, 0]), ([3, 1], [[1], [2], [0]]), ([3, 1], [1, 2, 0])):
        labels = {"name": "labels", "shape": shape, "datatype": "INT64", "data": data}
        response = infer(client, {"inputs": [labels, z_json(z)]}, model="cond")  # any order
        assert response.status_code == 200, response.data
        got = np.asarray(response.json["outputs"][0]["data"], dtype=np.float32)
        assert got.tobytes() == expected.tobytes()


def test_binary_labels_after_json_z(client: FlaskClient) -> None:
    z = noise(2, 60)
    labels = np.array([[0], [2]], dtype=np.int64)
    inputs = [z_json(z), {"name": "labels", "shape": [2, 1], "datatype": "INT64",
                          "parameters": {"binary_data_size": labels.nbytes}}]
    response = infer(client, {"inputs": inputs, "parameters": {"binary_data_output": True}},
                     model="cond", binary=labels.tobytes())
    expected = generate_npy(client, {"model": "cond", "noise": z.tolist(), "labels": [0, 2]})
    assert binary_images(response).tobytes() == expected.tobytes()


def test_request_id_is_echoed_only_when_given(client: FlaskClient) -> None:
    z = noise(1)
    assert infer(client, {"id": "abc", "inputs": [z_json(z)]}).json["id"] == "abc"
    assert "id" not in infer(client, {"inputs": [z_json(z)]}).json
    assert_v2_error(infer(client, {"id": 7, "inputs": [z_json(z)]}), 400, "id")


def test_malformed_json(client: FlaskClient) -> None:
    for body in (b"{", b"", b"\xff\xfe", b"[" * 60_000, b"[1, 2]", b'"inputs"'):
        response = client.post("/v2/models/tiny/infer", data=body)
        assert_v2_error(response, 400)


def test_header_length_beyond_the_body(client: FlaskClient) -> None:
    z = noise(1)
    response = infer(client, {"inputs": [z_json(z)]}, header_length="100000")
    assert_v2_error(response, 400, HEADER_LENGTH, "100000")
    for bad in ("-1", "abc", "1e3", "9" * 40):
        assert_v2_error(infer(client, {"inputs": [z_json(z)]}, header_length=bad), 400, HEADER_LENGTH)


def test_header_length_cutting_the_json(client: FlaskClient) -> None:
    z = noise(1)
    assert_v2_error(infer(client, {"inputs": [z_json(z)]}, header_length="10"), 400, "JSON")


def test_binary_data_size_mismatch(client: FlaskClient) -> None:
    z = noise(2)
    # The declared size disagrees with the shape.
    response = infer(client, {"inputs": [z_binary(z, size=z.nbytes - 4)]}, z.tobytes()[:-4])
    assert_v2_error(response, 400, "binary_data_size", str(z.nbytes))
    # The size agrees with the shape, but the body holds fewer bytes.
    response = infer(client, {"inputs": [z_binary(z)]}, z.tobytes()[:-4])
    assert_v2_error(response, 400, "past the end")
    # Bytes left over that no input claims.
    response = infer(client, {"inputs": [z_binary(z)]}, z.tobytes() + b"\0" * 8)
    assert_v2_error(response, 400, "8 bytes")
    # A binary input without any binary section.
    assert_v2_error(infer(client, {"inputs": [z_binary(z)]}), 400, "past the end")
    # data and binary_data_size both.
    both = z_binary(z) | {"data": z.ravel().tolist()}
    assert_v2_error(infer(client, {"inputs": [both]}, z.tobytes()), 400, "both")


def test_too_many_samples(client: FlaskClient) -> None:
    z = noise(MAX_SAMPLES + 1)
    assert_v2_error(infer(client, {"inputs": [z_json(z)]}), 400, "too many samples", "16")
    assert_v2_error(infer(client, {"inputs": [z_binary(z)]}, z.tobytes()), 400, "too many samples")


def test_non_finite_values(client: FlaskClient) -> None:
    for value in ("NaN", "Infinity", "-Infinity", "1e39", "1e400"):
        data = ", ".join(["0.5"] * (LATENT - 1) + [value])
        tensor = f'{{"name": "z", "shape": [1, {LATENT}], "datatype": "FP32", "data": [{data}]}}'
        body = f'{{"inputs": [{tensor}]}}'
        response = client.post("/v2/models/tiny/infer", data=body)
        assert_v2_error(response, 400, "finite")
    z = noise(2)
    z[1, 3] = np.nan
    assert_v2_error(infer(client, {"inputs": [z_binary(z)]}, z.tobytes()), 400, "finite")


def test_wrong_inputs(client: FlaskClient) -> None:
    z = noise(2)
    labels = {"name": "labels", "shape": [2], "datatype": "INT64", "data": [0, 1]}
    cases = [
        ({"inputs": [z_json(z), labels]}, "tiny", "no input 'labels'"),
        ({"inputs": [z_json(z)]}, "cond", "labels"),
        ({"inputs": [z_json(z), labels | {"data": [0, 3]}]}, "cond", f"[0, {len(CLASSES)})"),
        ({"inputs": [z_json(z), labels | {"data": [0, -1]}]}, "cond", f"[0, {len(CLASSES)})"),
        ({"inputs": [z_json(z), labels | {"shape": [3], "data": [0, 1, 2]}]}, "cond", "same n"),
        ({"inputs": [z_json(z), labels | {"shape": [2, 2], "data": [0] * 4}]}, "cond", "[n, 1]"),
        ({"inputs": [z_json(z), labels | {"datatype": "INT32"}]}, "cond", "INT64"),
        ({"inputs": [z_json(z), labels | {"data": [0.5, 1.0]}]}, "cond", "integers"),
        ({"inputs": [z_json(z), z_json(z)]}, "tiny", "more than once"),
        ({"inputs": [z_json(z) | {"name": "x"}]}, "tiny", "no input 'x'"),
        ({"inputs": [z_json(z) | {"datatype": "FP16"}]}, "tiny", "FP32"),
        ({"inputs": [z_json(z) | {"shape": [2, LATENT, 1]}]}, "tiny", "shape"),
        ({"inputs": [z_json(z) | {"shape": [0, LATENT], "data": []}]}, "tiny", "1 <= n"),
        ({"inputs": [z_json(z) | {"shape": [2, True]}]}, "tiny", "shape"),
        ({"inputs": [z_json(z) | {"shape": "2,8"}]}, "tiny", "shape"),
        ({"inputs": [z_json(z) | {"shape": [1, LATENT]}]}, "tiny", "data has shape"),
        ({"inputs": [z_json(z) | {"data": [[1.0, 2.0], [3.0]]}]}, "tiny", "numbers"),
        ({"inputs": [z_json(z) | {"data": ["a"] * (2 * LATENT)}]}, "tiny", "numbers"),
        ({"inputs": [z_json(z) | {"data": [True] * (2 * LATENT)}]}, "tiny", "numbers"),
        ({"inputs": [z_json(z) | {"data": [None] * (2 * LATENT)}]}, "tiny", "numbers"),
        ({"inputs": [z_json(z) | {"data": [10**400] * (2 * LATENT)}]}, "tiny", "numbers"),
        ({"inputs": [z_json(z) | {"data": 1.5}]}, "tiny", "array"),
        ({"inputs": [{k: v for k, v in z_json(z).items() if k != "data"}]}, "tiny", "neither"),
        ({"inputs": [z_json(z) | {"parameters": []}]}, "tiny", "parameters"),
        ({"inputs": [z_json(z) | {"parameters": {"shared_memory_region": "r"}}]}, "tiny", "shared memory"),
        ({"inputs": [z_json(z) | {"parameters": {"binary_data_size": -1}}]}, "tiny", "binary_data_size"),
        ({"inputs": []}, "tiny", "inputs"),
        ({"inputs": {"z": 1}}, "tiny", "inputs"),
        ({"inputs": [1]}, "tiny", "inputs[0]"),
        ({}, "tiny", "inputs"),
        ({"inputs": [z_json(z)], "outputs": [{"name": "logits"}]}, "tiny", "unknown output"),
        ({"inputs": [z_json(z)], "outputs": [{"name": "images"}] * 2}, "tiny", "more than once"),
        ({"inputs": [z_json(z)], "outputs": {"name": "images"}}, "tiny", "outputs"),
        ({"inputs": [z_json(z)], "outputs": [{"name": "images", "parameters": {"classification": 3}}]},
         "tiny", "classification"),
        ({"inputs": [z_json(z)], "outputs": [{"name": "images", "parameters": {"binary_data": 1}}]},
         "tiny", "binary_data"),
        ({"inputs": [z_json(z)], "parameters": {"binary_data_output": "yes"}}, "tiny", "binary_data_output"),
        ({"inputs": [z_json(z)], "parameters": [1]}, "tiny", "parameters"),
    ]
    for request, model, words in cases:
        assert_v2_error(infer(client, request, model=model), 400, words)


def test_body_over_the_limit(client: FlaskClient) -> None:
    response = client.post("/v2/models/tiny/infer", data=b"x" * (MAX_BODY + 1))
    assert_v2_error(response, 413, str(MAX_BODY))


def test_compressed_bodies_are_refused(client: FlaskClient) -> None:
    response = infer(client, {"inputs": [z_json(noise(1))]}, **{"Content-Encoding": "gzip"})
    assert_v2_error(response, 415, "gzip")


def test_routing_errors_have_the_v2_shape(client: FlaskClient) -> None:
    assert_v2_error(client.get("/v2/nothing"), 404)
    response = client.get("/v2/models/tiny/infer")
    assert_v2_error(response, 405)
    assert "POST" in response.headers["Allow"]
    assert_v2_error(client.get("/v2/models/nope"), 404, "unknown model 'nope'")
    assert_v2_error(client.get("/v2/models/tiny/versions/9"), 404, "no version 9")
    for version in ("abc", "01", "0", "9" * 30):
        assert_v2_error(client.get(f"/v2/models/tiny/versions/{version}/ready"), 404, "no version")
        assert_v2_error(
            infer(client, {"inputs": [z_json(noise(1))]}, model=f"tiny/versions/{version}"), 404
        )
    assert_v2_error(client.get("/v2/models/nope/versions/abc/ready"), 404, "unknown model")
    # The service's own routes keep their error shape.
    assert client.get("/nothing").json["error"]["code"] == "not_found"


def test_health_and_metadata_routes(client: FlaskClient) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/tiny/ready",
                 "/v2/models/cond/versions/1/ready", "/v2/models/tiny/versions/1/ready"):
        response = client.get(path)
        assert response.status_code == 200 and response.data == b"", path
    assert client.get("/v2").json["extensions"] == ["binary_tensor_data"]
    assert client.get("/v2/models/cond/versions/1").json["versions"] == ["1"]


def test_version_outside_the_policy_with_the_cache_off(models_dir: Path) -> None:
    from serve.app import create_app

    app = create_app({"GAN_MODELS_DIR": str(models_dir), "GAN_RELOAD_INTERVAL": "0",
                      "GAN_VERSION_CACHE": "0"})
    client = app.test_client()
    assert_v2_error(client.get("/v2/models/tiny/versions/1/ready"), 404, "not loaded")
    assert client.get("/v2/models/tiny/versions/1").status_code == 200  # metadata: on disk
    assert_v2_error(infer(client, {"inputs": [z_json(noise(1))]}, model="tiny/versions/1"), 404)


def test_openapi_documents_every_v2_route(app: Flask, client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    validate_openapi(spec)
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v2"):
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        assert path in spec["paths"], path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in spec["paths"][path], (method, path)


def images_counted(client: FlaskClient, model: str) -> float:
    """gan_images_generated_total for ``model`` in this process's /metrics."""
    text = client.get("/metrics").get_data(as_text=True)
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "gan_images_generated"
        for sample in family.samples
        if sample.name == "gan_images_generated_total" and sample.labels["model"] == model
    )


def test_infer_is_counted_in_the_metrics(client: FlaskClient) -> None:
    before = images_counted(client, "tiny")
    z = noise(3)
    response = infer(client, {"inputs": [z_binary(z)]}, z.tobytes())
    assert response.status_code == 200
    assert images_counted(client, "tiny") == before + 3
