"""Same seed, same model version: byte-identical PNG whatever else the request holds."""

from __future__ import annotations

import base64
import io
import struct
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient
from helpers.tiny_models import write_model
from PIL import Image

from serve import imaging, latent
from serve.app import create_app
from serve.model import MAX_BATCH, OnnxGenerator, load_onnx_generator
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


def one_by_one(generator: OnnxGenerator, z: np.ndarray) -> np.ndarray:
    return np.concatenate([generator.generate(z[i : i + 1]) for i in range(len(z))])


def test_a_batch_size_is_used_once_checked_against_batch_one(tmp_path: Path) -> None:
    path = write_model(tmp_path, "wide", 1, latent=128, shape=(3, 32, 32))
    generator = load_onnx_generator(read_spec(path, "wide", 1), threads=1)
    z = latent.noise_for_seeds(range(5), 128)
    expected = one_by_one(generator, z)
    spy = SessionSpy(generator.session)
    generator.session = spy  # type: ignore[assignment]
    assert generator.generate(z).tobytes() == expected.tobytes()
    # First use of size 5: the probe seeds as one batch and one by one, then the request.
    assert spy.batches == [5, 1, 1, 1, 1, 1, 5]
    assert generator.batch_verdicts[5] is True
    spy.batches.clear()
    assert generator.generate(z[::-1].copy()).tobytes() == expected[::-1].tobytes()
    assert spy.batches == [5]  # checked once


def test_large_requests_run_in_batches_of_at_most_max_batch(tmp_path: Path) -> None:
    path = write_model(tmp_path, "tiny", 1)
    generator = load_onnx_generator(read_spec(path, "tiny", 1), threads=1)
    n = 2 * MAX_BATCH + 3
    z = latent.noise_for_seeds(range(n), 8)
    expected = one_by_one(generator, z)
    generator.generate(z)  # settles the verdicts of MAX_BATCH and 3
    spy = SessionSpy(generator.session)
    generator.session = spy  # type: ignore[assignment]
    assert generator.generate(z).tobytes() == expected.tobytes()
    assert spy.batches == [MAX_BATCH, MAX_BATCH, 3]


def test_a_batch_size_that_changes_the_bits_runs_one_sample_at_a_time(tmp_path: Path) -> None:
    path = write_model(tmp_path, "mixing", 1, batch_dependent=True)
    generator = load_onnx_generator(read_spec(path, "mixing", 1), threads=1)
    z = latent.noise_for_seeds(range(4), 8)
    expected = one_by_one(generator, z)
    spy = SessionSpy(generator.session)
    generator.session = spy  # type: ignore[assignment]
    assert generator.generate(z).tobytes() == expected.tobytes()
    assert generator.batch_verdicts[4] is False
    spy.batches.clear()
    generator.generate(z)
    assert spy.batches == [1, 1, 1, 1]


def test_batching_off_runs_one_sample_at_a_time(tmp_path: Path) -> None:
    path = write_model(tmp_path, "tiny", 1)
    generator = load_onnx_generator(read_spec(path, "tiny", 1), threads=1, batching=False)
    spy = SessionSpy(generator.session)
    generator.session = spy  # type: ignore[assignment]
    generator.generate(latent.noise_for_seeds(range(3), 8))
    assert spy.batches == [1, 1, 1]


def test_batch_dependent_model_really_differs_in_a_batch(tmp_path: Path) -> None:
    # The fallback test above is only meaningful if batching would change this model's bits.
    path = write_model(tmp_path, "mixing", 1, batch_dependent=True)
    generator = load_onnx_generator(read_spec(path, "mixing", 1), threads=1)
    z = latent.noise_for_seeds(range(4), 8)
    batched = generator.session.run(["images"], {"z": z})[0]
    assert batched.tobytes() != one_by_one(generator, z).tobytes()


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


def pillow_png(tile: np.ndarray) -> bytes:
    """What Pillow's own PNG writer makes of a tile: the bytes png_bytes must reproduce."""
    buffer = io.BytesIO()
    Image.fromarray(tile[:, :, 0] if tile.shape[2] == 1 else tile).save(
        buffer, format="PNG", compress_level=6
    )
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("height", "width", "channels"),
    [(28, 28, 1), (242, 242, 1), (1, 1, 1), (7, 5, 3), (242, 242, 3), (400, 400, 3), (3, 20000, 3)],
)
def test_png_bytes_are_pillows(height: int, width: int, channels: int) -> None:
    # Random pixels defeat compression, so the large cases span several IDAT chunks (the
    # last one is wider than 16384 pixels, where Pillow's chunks grow beyond 65536 bytes).
    rng = np.random.default_rng(height * width + channels)
    for tile in (
        rng.integers(0, 256, (height, width, channels), dtype=np.uint8),
        (rng.integers(0, 4, (height, width, channels)) * 85).astype(np.uint8),
        np.zeros((height, width, channels), dtype=np.uint8),
    ):
        assert imaging.png_bytes(tile) == pillow_png(tile)
    big = imaging.png_bytes(rng.integers(0, 256, (height, width, channels), dtype=np.uint8))
    if height * width * channels > 200_000:
        assert png_chunks(big).count("IDAT") > 1


@pytest.mark.parametrize(
    ("n", "shape"), [(1, (1, 1)), (2, (1, 2)), (3, (2, 2)), (4, (2, 2)), (5, (2, 3)), (10, (3, 4)),
                     (64, (8, 8))]
)
def test_grid_rule(n: int, shape: tuple[int, int]) -> None:
    assert imaging.grid_shape(n) == shape


def test_to_uint8_rounds_half_to_even_and_clips() -> None:
    values = np.array(
        [0.0, 0.5 / 255, 1.5 / 255, 0.25, 1.0, 1.5, -0.5, np.nan, np.inf, -np.inf], np.float32
    )
    out = imaging.to_uint8(values.reshape(1, 1, 1, -1))
    assert out.reshape(-1).tolist() == [0, 0, 2, 64, 255, 255, 0, 0, 255, 0]


def test_the_batching_setting_reaches_the_loaded_versions(models_dir: Path) -> None:
    for setting, expected in (("on", True), ("off", False)):
        app = create_app({"GAN_MODELS_DIR": str(models_dir), "GAN_BATCHING": setting})
        assert app.extensions["gan"].registry.resolve("tiny", None).batching is expected
