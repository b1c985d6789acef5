"""End to end: the documented gunicorn command, two workers, driven over loopback HTTP."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests
from helpers.server import SPREAD_ATTEMPTS, Server, assert_start_refused
from helpers.tiny_models import LATENT, corrupt_sha, write_model, write_repository, wrong_output_shape

from serve import latent


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("e2e") / "models")


@pytest.fixture(scope="module")
def server(repo: Path, gunicorn: Callable[..., Server]) -> Server:
    """Two workers; GAN_BIND names a port nobody listens on, so readiness proves --bind wins."""
    return gunicorn(
        GAN_MODELS_DIR=str(repo), GAN_WORKERS="2", GAN_DEFAULT_MODEL="tiny", GAN_BIND="127.0.0.1:9"
    )


def post(server: Server, body: dict, **headers: str) -> requests.Response:
    return requests.post(f"{server.url}/generate", json=body, headers=headers, timeout=30)


def test_generate_from_seeds_and_noise(server: Server) -> None:
    by_seed = post(server, {"seeds": [5, 6]})
    assert by_seed.status_code == 200
    assert by_seed.headers["X-Model-Name"] == "tiny"
    assert by_seed.headers["X-Model-Version"] == "2"
    z = latent.noise_for_seeds([5, 6], LATENT)
    by_noise = post(server, {"noise": z.tolist()})
    assert by_noise.json()["images"] == by_seed.json()["images"]


def test_conditional_labels_and_formats(server: Server) -> None:
    png = requests.get(f"{server.url}/generate?model=cond&seed=1&n=4&labels=0,1,2,0", timeout=30)
    assert png.status_code == 200
    assert png.headers["Content-Type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    npy = post(server, {"model": "cond", "seed": 1, "n": 4, "labels": 1, "format": "npy"})
    assert npy.headers["Content-Type"] == "application/x-npy"
    assert npy.content.startswith(b"\x93NUMPY")


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("post", "/generate", {"data": "{", "headers": {"Content-Type": "application/json"}},
         400, "malformed_json"),
        ("post", "/generate", {"data": '{"seed": 1}'}, 415, "unsupported_media_type"),
        ("post", "/generate", {"json": {"seed": 1, "n": 65}}, 422, "too_many_samples"),
        ("post", "/generate", {"json": {"model": "cond", "noise": [[0.0] * 8]}}, 422, "labels_required"),
        ("post", "/generate", {"json": {"noise": [[0.0]]}}, 422, "invalid_noise_shape"),
        ("get", "/generate?seed=1&model=nope", {}, 404, "unknown_model"),
        ("get", "/nope", {}, 404, "not_found"),
        ("put", "/generate", {}, 405, "method_not_allowed"),
    ],
)
def test_errors(
    server: Server, method: str, path: str, kwargs: dict, status: int, code: str
) -> None:
    response = requests.request(method, f"{server.url}{path}", timeout=30, **kwargs)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_pinned_version_outside_the_policy_is_served(server: Server) -> None:
    # The default policy, latest:1, loads tiny 2 only; version 1 is loaded on demand.
    tiny = requests.get(f"{server.url}/models/tiny", timeout=30).json()
    assert (tiny["versions"], tiny["policy_versions"]) == ([1, 2], [2])
    response = post(server, {"seeds": [7], "version": 1})
    assert response.status_code == 200
    assert response.headers["X-Model-Version"] == "1"


def collect_by_worker(server: Server, body: dict) -> dict[str, set[bytes]]:
    """PNG bytes per worker pid, one new connection per request, until two workers answered."""
    seen: dict[str, set[bytes]] = {}
    for _ in range(SPREAD_ATTEMPTS):
        response = post(server, body, Connection="close")
        assert response.status_code == 200
        png = base64.b64decode(response.json()["images"][0])
        seen.setdefault(response.headers["X-Worker-Pid"], set()).add(png)
        if len(seen) == 2:
            break
    return seen


def test_same_bytes_from_every_worker(server: Server) -> None:
    seen = collect_by_worker(server, {"seeds": [123]})
    assert len(seen) == 2, f"only worker {list(seen)} answered {SPREAD_ATTEMPTS} requests"
    assert len(set().union(*seen.values())) == 1


def test_same_bytes_after_a_restart(
    server: Server, repo: Path, gunicorn: Callable[..., Server]
) -> None:
    body = {"seed": 40, "n": 3, "format": "png"}
    before = post(server, body).content
    again = gunicorn(GAN_MODELS_DIR=str(repo), GAN_WORKERS="1", GAN_DEFAULT_MODEL="tiny")
    after = post(again, body).content
    again.stop()
    assert after == before


def test_replacement_worker_skips_a_bad_new_version(
    tmp_path: Path, gunicorn: Callable[..., Server]
) -> None:
    repo = write_repository(tmp_path / "models")
    server = gunicorn(GAN_MODELS_DIR=str(repo), GAN_WORKERS="1", GAN_DEFAULT_MODEL="tiny")
    try:
        first = requests.get(f"{server.url}/healthz", timeout=30).json()["pid"]
        corrupt_sha(write_model(repo, "tiny", 3))
        os.kill(first, signal.SIGKILL)
        pid = first
        deadline = time.monotonic() + 60
        while pid == first and server.process.poll() is None and time.monotonic() < deadline:
            try:
                pid = requests.get(f"{server.url}/healthz", timeout=5).json()["pid"]
            except requests.ConnectionError:
                time.sleep(0.1)  # polling interval while the master forks a new worker
        assert pid != first
        assert server.process.poll() is None
        assert post(server, {"seed": 1}).headers["X-Model-Version"] == "2"
    finally:
        log = server.stop()
    assert "sha256 of model.onnx is" in log


def damage_empty(repo: Path) -> None:
    for model in repo.iterdir():
        subprocess.run(["rm", "-r", str(model)], check=True)


def damage_every_version(damage: Callable[[Path], None]) -> Callable[[Path], None]:
    def apply(repo: Path) -> None:
        for version in repo.glob("*/*"):
            damage(version)

    return apply


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        (damage_empty, "holds no models"),
        (damage_every_version(corrupt_sha), "sha256 of model.onnx is"),
        (damage_every_version(wrong_output_shape), "does not match model.json"),
    ],
)
def test_bad_repository_stops_gunicorn(
    tmp_path: Path, damage: Callable[[Path], None], fragment: str
) -> None:
    repo = write_repository(tmp_path / "models")
    damage(repo)
    assert_start_refused(fragment, GAN_MODELS_DIR=str(repo))


def test_missing_repository_stops_gunicorn(tmp_path: Path) -> None:
    assert_start_refused("does not exist", GAN_MODELS_DIR=str(tmp_path / "nowhere"))


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"GAN_WORKERS": "many"}, "GAN_WORKERS must be an integer"),
        ({"GAN_WORKERS": str(len(os.sched_getaffinity(0)) + 1)}, "exceeds the"),
        ({"GAN_VERSION_POLICY": "latest:0"}, "GAN_VERSION_POLICY must be latest:N"),
        ({"GAN_PROVIDERS": "gpu"}, "GAN_PROVIDERS: unknown provider 'gpu'"),
        # Checked by the workers (the master never imports onnxruntime): they fail to boot.
        ({"GAN_PROVIDERS": "cuda"}, "asks for CUDAExecutionProvider, which this onnxruntime"),
    ],
)
def test_bad_settings_stop_gunicorn(repo: Path, env: dict[str, str], fragment: str) -> None:
    assert_start_refused(fragment, GAN_MODELS_DIR=str(repo), **env)


def test_noise_from_numpy_matches_the_server(server: Server) -> None:
    # Rebuild z with numpy exactly as docs/serving.md tells clients to.
    z = np.random.Generator(np.random.PCG64(2**63 - 1)).standard_normal(LATENT, dtype=np.float32)
    by_seed = post(server, {"seeds": [2**63 - 1]}).json()["images"]
    assert post(server, {"noise": [z.tolist()]}).json()["images"] == by_seed


def test_batched_requests_give_each_seed_its_own_bytes_under_load(server: Server) -> None:
    # Requests of 1, 5, 16 and 35 samples (batches of 16 and a remainder) from four clients at
    # once, on both workers and both models: every seed's PNG equals the one it gets alone.
    seeds = list(range(500, 535))
    alone = {
        (model, s): post(server, {"model": model, "seeds": [s]}).json()["images"][0]
        for model in ("tiny", "cond")
        for s in seeds
    }
    failures: list[str] = []

    def client(n: int) -> None:
        for start in range(0, len(seeds), n):
            chunk = seeds[start : start + n]
            for model in ("tiny", "cond"):
                response = post(server, {"model": model, "seeds": chunk})
                if response.status_code != 200:
                    failures.append(response.text)
                    continue
                images = response.json()["images"]
                failures.extend(
                    f"{model} seed {s} in a request of {n}"
                    for s, png in zip(chunk, images, strict=True)
                    if png != alone[model, s]
                )

    threads = [threading.Thread(target=client, args=(n,)) for n in (1, 5, 16, 35)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]
