"""Same seed, same model version: byte-identical PNG whatever else the request holds."""

from __future__ import annotations

import base64
import io
import struct
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image
from tiny_models import write_model

from serve import imaging, latent
from serve.app import create_app
from serve.model import load_generator
from serve.repository import read_spec


def pngs(client: FlaskClient, body: dict) -> list[bytes]:
    response = client.post("/generate", json=body)
    assert response.status_code == 200, response.data
    return [base64.b64decode(s) for s in response.json["images"]]


def test_seed_image_does_not_depend_on_the_request(client: FlaskClient) -> None:
    alone = pngs(client, {"seeds": [7]})[0]
    assert pngs(client, {"seed": 7})[0] == alone
    assert pngs(client, {"seeds": [1, 7, 3]})[1] == alone
    assert pngs(client, {"seed": 0, "n": 16})[7] == alone
    assert pngs(client, {"seeds": [7] * 5}) == [alone] * 5


def test_noise_row_image_does_not_depend_on_the_batch(client: FlaskClient) -> None:
    z = latent.noise_for_seeds(range(16), 8)
    batch = pngs(client, {"noise": z.tolist()})
    assert [pngs(client, {"noise": [row.tolist()]})[0] for row in z] == batch


def test_same_bytes_after_a_restart(models_dir: Path) -> None:
    body = {"seed": 11, "n": 4}
    config = {"GAN_MODELS_DIR": str(models_dir), "GAN_DEFAULT_MODEL": "tiny"}
    first = pngs(create_app(config).test_client(), body)
    second = pngs(create_app(config).test_client(), body)
    assert first == second


class SessionSpy:
    """Records the batch size of every run of a wrapped session."""

    def __init__(self, session: object) -> None:
        self.session = session
        self.batches: list[int] = []

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.batches.append(len(feeds["z"]))
        return self.session.run(outputs, feeds)  # type: ignore[attr-defined]


def test_inference_runs_one_sample_at_a_time(tmp_path: Path) -> None:
    # onnxruntime may choose other kernels for other batch sizes (last-bit differences that
    # can flip a rounded pixel); batch 1 keeps every sample's bytes independent of n.
    path = write_model(tmp_path, "wide", 1, latent=128, shape=(3, 32, 32))
    generator = load_generator(read_spec(path, "wide", 1), threads=1)
    z = latent.noise_for_seeds(range(5), 128)
    expected = np.concatenate([generator.generate(z[i : i + 1]) for i in range(5)])
    spy = SessionSpy(generator.session)
    generator.session = spy  # type: ignore[assignment]
    assert generator.generate(z).tobytes() == expected.tobytes()
    assert spy.batches == [1] * 5


def test_rgb_model_gives_rgb_pngs(tmp_path: Path) -> None:
    write_model(tmp_path, "rgb", 1, shape=(3, 4, 5))
    client = create_app({"GAN_MODELS_DIR": str(tmp_path)}).test_client()
    image = Image.open(io.BytesIO(pngs(client, {"seed": 1})[0]))
    assert image.mode == "RGB" and image.size == (5, 4)


def png_chunks(data: bytes) -> list[str]:
    """The chunk types of a PNG file."""
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        chunks.append(data[offset + 4 : offset + 8].decode("ascii"))
        offset += 12 + length
    return chunks


def test_png_has_no_metadata() -> None:
    tile = np.arange(30, dtype=np.uint8).reshape(6, 5, 1)
    data = imaging.png_bytes(tile)
    assert data == imaging.png_bytes(tile.copy())
    assert set(png_chunks(data)) == {"IHDR", "IDAT", "IEND"}


@pytest.mark.parametrize(
    ("n", "shape"), [(1, (1, 1)), (2, (1, 2)), (3, (2, 2)), (4, (2, 2)), (5, (2, 3)), (10, (3, 4)),
                     (64, (8, 8))]
)
def test_grid_rule(n: int, shape: tuple[int, int]) -> None:
    assert imaging.grid_shape(n) == shape


def test_to_uint8_rounds_half_to_even_and_clips() -> None:
    values = np.array([0.0, 0.5 / 255, 1.5 / 255, 0.25, 1.0, 1.5, -0.5, np.nan], np.float32)
    out = imaging.to_uint8(values.reshape(1, 1, 1, -1))
    assert out.reshape(-1).tolist() == [0, 0, 2, 64, 255, 255, 0, 0]
