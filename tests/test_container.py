"""The serving image, built from the Dockerfile and run with the project's container tool.

Run with ``pytest -m container tests/test_container.py`` (add ``-s`` to see the image sizes).
The tool (``container.sh``, buildah/podman) lives in ``shared/tools`` next to the repository;
``CONTAINER_SH`` overrides its path. Containers use the host network, so each one binds its
own free loopback port through ``GAN_BIND``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from helpers.tiny_models import write_model
from PIL import Image

from serve.imaging import GRID_PADDING, grid_shape

ROOT = Path(__file__).resolve().parents[1]
CONTAINER_SH = Path(
    os.environ.get("CONTAINER_SH") or ROOT.parent / "shared" / "tools" / "container.sh"
)
BASE_IMAGE = "docker.io/library/python:3.11-slim"
MODELS_IN_IMAGE = "/app/models"
READY_TIMEOUT_S = 90.0
STOP_LIMIT_S = 10.0
# The hardened run of docs/container.md. Docker's --read-only gives no writable /tmp;
# podman adds tmpfs mounts unless told not to.
HARDENED = (
    "--read-only",
    "--read-only-tmpfs=false",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
)

pytestmark = [
    pytest.mark.container,
    pytest.mark.skipif(
        not CONTAINER_SH.is_file(),
        reason=f"container tool not found at {CONTAINER_SH} (set CONTAINER_SH to its path)",
    ),
]


def tool(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``container.sh ARGS`` and return its result; fail the test on a non-zero exit."""
    result = subprocess.run(
        ["bash", str(CONTAINER_SH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"container.sh {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result


def layers_size(image: str) -> int:
    """The sum of the layer sizes ``podman history`` reports for an image, in bytes."""
    history = json.loads(tool("podman", "history", "--format", "json", image).stdout)
    return sum(int(entry.get("size", entry.get("Size", 0))) for entry in history)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Container:
    """A running container of the image and the URL its service answers on."""

    name: str
    url: str

    def logs(self) -> str:
        result = tool("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, *cmd: str) -> subprocess.CompletedProcess:
        return tool("exec", self.name, *cmd, check=False)

    def state(self) -> dict:
        out = tool("podman", "inspect", "--format", "{{json .State}}", self.name).stdout
        return json.loads(out)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Poll /readyz until it answers 200; fail with the container's logs otherwise."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            state = self.state()
            if not state["Running"]:
                pytest.fail(
                    f"container {self.name} exited with {state['ExitCode']} during start:\n"
                    f"{self.logs()}"
                )
            try:
                response = requests.get(f"{self.url}/readyz", timeout=2)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            except requests.ConnectionError as e:
                last = str(e)
            time.sleep(0.5)
        pytest.fail(f"{self.name} not ready after {timeout:.0f} s ({last}):\n{self.logs()}")


@contextmanager
def running(image: str, *args: str) -> Iterator[Container]:
    """Start the image with extra ``podman run`` ARGS, wait until ready, always remove it."""
    name = f"gan-serve-test-{uuid.uuid4().hex[:10]}"
    port = free_port()
    container = Container(name, f"http://127.0.0.1:{port}")
    try:
        tool("start", image, name, "-e", f"GAN_BIND=127.0.0.1:{port}", *args)
        container.wait_ready()
        yield container
    finally:
        tool("stop", name, timeout=60, check=False)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The image built from the repository under a tag of its own; prints its sizes."""
    tag = f"localhost/gan-serve-test:{uuid.uuid4().hex[:12]}"
    start = time.monotonic()
    try:
        tool("build", str(ROOT), tag, timeout=900)
        total = int(tool("podman", "image", "inspect", "--format", "{{.Size}}", tag).stdout)
        above_base = layers_size(tag) - layers_size(BASE_IMAGE)
        print(
            f"\nimage {tag}: built in {time.monotonic() - start:.0f} s, "
            f"{total / 1e6:.1f} MB in total, {above_base / 1e6:.1f} MB above {BASE_IMAGE}"
        )
        yield tag
    finally:
        # --no-prune keeps the intermediate layers, so the next build is served from cache.
        tool("podman", "rmi", "--force", "--no-prune", tag, check=False)


@pytest.fixture(scope="module")
def server(image: str) -> Iterator[Container]:
    """The image as shipped, run hardened: read-only root file system, no capabilities."""
    with running(image, *HARDENED) as container:
        yield container


# Run inside the container: {pid: [[real, effective, saved, fs uid], cmdline]} of every other
# process, as JSON.
PROCESSES_SCRIPT = """
import json, os
found = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        continue
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    if int(pid) != os.getpid():
        found[pid] = [uids, cmd.strip()]
print(json.dumps(found))
"""


def png(data: bytes) -> np.ndarray:
    """Decode PNG bytes (signature checked) to a uint8 array [H, W] or [H, W, C]."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image)


def generate(url: str, body: dict) -> dict:
    """POST /generate with a JSON body; the JSON answer, with ``images`` decoded to arrays."""
    response = requests.post(f"{url}/generate", json=body, timeout=30)
    assert response.status_code == 200, response.text
    answer = response.json()
    answer["png"] = [base64.b64decode(b) for b in answer["images"]]
    answer["images"] = [png(b) for b in answer["png"]]
    return answer


def served(url: str) -> dict:
    """The summary of the default model from GET /models."""
    listing = requests.get(f"{url}/models", timeout=10).json()
    return next(m for m in listing["models"] if m["name"] == listing["default"])


def seed_noise(seed: int, size: int) -> np.ndarray:
    """A seed's latent vector, rebuilt from the documented spec without the server's code."""
    return np.random.Generator(np.random.PCG64(seed)).standard_normal(size, dtype=np.float32)


def tile_shape(model: dict) -> tuple[int, ...]:
    """The array shape of one decoded PNG tile of ``model``: [H, W] or [H, W, 3]."""
    channels, height, width = model["image_shape"]
    return (height, width) if channels == 1 else (height, width, channels)


def test_image_metadata(image: str) -> None:
    info = json.loads(tool("podman", "image", "inspect", image).stdout)[0]
    config = info["Config"]
    assert all(p.isdigit() and p != "0" for p in config["User"].split(":")), config["User"]
    assert "8000/tcp" in config["ExposedPorts"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["GAN_BIND"] == "0.0.0.0:8000"
    assert env["GAN_MODELS_DIR"] == MODELS_IN_IMAGE
    assert env["PYTHONDONTWRITEBYTECODE"] == env["PYTHONUNBUFFERED"] == "1"
    assert not config.get("Entrypoint")
    assert config["Cmd"][:3] == ["gunicorn", "-c", "serve/gunicorn.conf.py"]  # exec form
    assert info["Healthcheck"]["Test"][:2] == ["CMD", "python"]  # exec form, no curl needed


def test_generate_from_seeds_is_reproducible(server: Container) -> None:
    model = served(server.url)
    first = generate(server.url, {"seeds": [3, 1, 2]})
    assert first["model"] == model["name"] and first["version"] == model["default_version"]
    assert first["shape"] == [3, *model["image_shape"]]
    assert [image.shape for image in first["images"]] == [tile_shape(model)] * 3
    assert first["images"][0].std() > 0  # not a blank tile

    # The same seed gives the same bytes whatever the batch, the position and the worker.
    by_range = generate(server.url, {"seed": 1, "n": 3})
    assert by_range["seeds"] == [1, 2, 3]
    assert by_range["png"] == [first["png"][1], first["png"][2], first["png"][0]]
    for _ in range(4):
        assert generate(server.url, {"seeds": [2]})["png"] == [first["png"][2]]


def test_generate_from_noise_matches_the_seed(server: Container) -> None:
    model = served(server.url)
    z = seed_noise(7, model["latent_size"])
    body = {"noise": [z.tolist(), (-z).tolist()]}
    if model["conditional"]:  # seeds without labels take class seed % K; noise must say so
        body["labels"] = 7 % len(model["classes"])
    from_noise = generate(server.url, body)
    from_seed = generate(server.url, {"seeds": [7]})
    assert from_noise["shape"] == [2, *model["image_shape"]]
    assert from_noise["png"][0] == from_seed["png"][0]
    assert from_noise["png"][1] != from_seed["png"][0]


def test_get_generate_returns_a_png_grid_of_the_seeds(server: Container) -> None:
    model = served(server.url)
    response = requests.get(f"{server.url}/generate", params={"seed": 1, "n": 6}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "image/png"
    grid = png(response.content)

    # The grid holds the PNG tiles of seeds 1..6, row-major, GRID_PADDING pixels apart.
    tiles = generate(server.url, {"seed": 1, "n": 6})["images"]
    height, width = tile_shape(model)[:2]
    rows, cols = grid_shape(6)
    pad = GRID_PADDING
    assert grid.shape[:2] == (rows * (height + pad) + pad, cols * (width + pad) + pad)
    for i, tile in enumerate(tiles):
        top = pad + (i // cols) * (height + pad)
        left = pad + (i % cols) * (width + pad)
        np.testing.assert_array_equal(grid[top : top + height, left : left + width], tile)


def test_runs_as_non_root(server: Container) -> None:
    result = server.exec("id", "-u")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() != "0"

    # gunicorn itself is PID 1 (exec-form CMD, no shell), and neither it nor a worker is root.
    result = server.exec("python", "-c", PROCESSES_SCRIPT)
    assert result.returncode == 0, result.stderr
    processes = {int(pid): info for pid, info in json.loads(result.stdout).items()}
    gunicorn = {pid: uids for pid, (uids, cmd) in processes.items() if "gunicorn" in cmd}
    assert 1 in gunicorn, processes
    assert len(gunicorn) >= 2, f"no worker besides the master: {processes}"
    assert all("0" not in uids for uids in gunicorn.values()), gunicorn


def test_has_no_torch_and_no_training_code(server: Container) -> None:
    result = server.exec("python", "-c", "import torch")
    assert result.returncode != 0
    assert "No module named 'torch'" in result.stderr
    result = server.exec("ls", "-A", "/app")
    assert result.stdout.split() == ["models", "serve"]


def test_works_on_a_read_only_root_file_system(server: Container) -> None:
    # The server fixture runs with --read-only and no tmpfs: serving at all proves the point.
    for path in ("/app/probe", "/tmp/probe"):
        result = server.exec("touch", path)
        assert result.returncode != 0, f"{path} is writable"
    assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200


def test_healthcheck_passes(server: Container) -> None:
    result = tool("podman", "healthcheck", "run", server.name, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_logs_go_to_stdout_and_stderr(server: Container) -> None:
    requests.get(f"{server.url}/healthz", timeout=10)
    logs = server.logs()
    assert "Listening at: http://127.0.0.1:" in logs
    access = [json.loads(line) for line in logs.splitlines() if line.startswith('{"time"')]
    assert any(  # the access log: one JSON line per request
        (line["method"], line["path"], line["status"]) == ("GET", "/healthz", 200) for line in access
    ), logs
    for bad in ("Traceback", "[ERROR]", "[WARNING]", "[W:onnxruntime"):
        assert bad not in logs, logs


def test_a_mounted_models_directory_replaces_the_baked_one(
    image: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    models = tmp_path_factory.mktemp("models")
    write_model(models, "mounted", 3, latent=5, shape=(3, 4, 7), weight_seed=11)
    for path in [models, *models.rglob("*")]:  # readable by the image's non-root user
        path.chmod(0o755 if path.is_dir() else 0o644)

    with running(image, *HARDENED, "-v", f"{models}:{MODELS_IN_IMAGE}:ro,Z") as container:
        listing = requests.get(f"{container.url}/models", timeout=10).json()
        assert listing["default"] == "mounted"
        assert [(m["name"], m["versions"]) for m in listing["models"]] == [("mounted", [3])]
        answer = generate(container.url, {"seeds": [0, 1]})
        assert (answer["model"], answer["version"]) == ("mounted", 3)
        assert [image.shape for image in answer["images"]] == [(4, 7, 3)] * 2


def test_stops_cleanly_on_sigterm(image: str) -> None:
    with running(image, *HARDENED) as container:
        host, port = container.url.removeprefix("http://").split(":")
        body = json.dumps({"seeds": [0]}).encode()
        head = (
            f"POST /generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with socket.create_connection((host, int(port)), timeout=30) as client:
            # A request in flight: a worker has its headers and waits for the rest of the body.
            client.sendall(head + body[:4])
            time.sleep(0.5)
            start = time.monotonic()
            tool("podman", "kill", "--signal", "TERM", container.name)
            time.sleep(0.5)
            client.sendall(body[4:])
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
        # gunicorn let the request finish before its worker exited, then stopped by itself.
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
        waited = tool("podman", "wait", container.name, timeout=STOP_LIMIT_S + 20)
        elapsed = time.monotonic() - start
        state = container.state()
        logs = container.logs()
        assert int(waited.stdout.strip()) == 0, logs
        assert state["ExitCode"] == 0 and not state["OOMKilled"], state
        assert elapsed < STOP_LIMIT_S, f"took {elapsed:.1f} s to stop"
        assert "Shutting down: Master" in logs
