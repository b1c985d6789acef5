"""One fault is never an outage: real gunicorn, real clients, one fault at a time.

The scenarios are bench/faults.py's (which also measures how soon the service is whole
again); here they run briefly on the tiny test models, and the tests check what must hold
whatever the machine's speed: which requests may fail, that the service stays up and that
it recovers. Timings are the benchmark's business.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
from helpers.server import ROOT, Server
from helpers.tiny_models import LATENT, SHAPE, metadata, write_model, write_repository
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(ROOT / "bench"))

import faults  # noqa: E402

CLIENTS = 3


@pytest.fixture
def service(tmp_path: Path) -> Iterator[faults.Service]:
    repo = write_repository(tmp_path / "models")
    with faults.service(repo, tmp_path / "service.log", GAN_RELOAD_INTERVAL="1",
                        GAN_CLIENT_TIMEOUT="2") as (svc, _):
        yield svc


def options(**overrides: object) -> SimpleNamespace:
    return SimpleNamespace(**({"clients": CLIENTS, "model": "tiny", "duration": 2.0,
                               "outage": 1.5, "stalled": 50} | overrides))


def test_a_killed_worker_costs_at_most_a_request_per_client(service: faults.Service) -> None:
    result = faults.run_sigkill(service, options())
    # A keep-alive client on the killed worker loses its request in flight, or its next one
    # on that connection; then it reconnects to a live worker.
    assert result.failed <= CLIENTS
    assert result.requests > 10 * CLIENTS
    assert result.recovery_s is not None  # a replacement serves images
    assert len(service.workers()) == 2


def test_repository_away_while_a_worker_dies_is_no_outage(
    service: faults.Service, tmp_path: Path
) -> None:
    result = faults.run_repository(service, options())
    assert result.failed <= CLIENTS  # only the killed worker's requests
    # gunicorn's master kept running, with a replacement that booted without the repository,
    # and the surviving worker answered /readyz from memory, saying the repository is away.
    assert result.notes["workers_in_outage"] == 2
    assert (result.notes["readyz_in_outage"], result.notes["repository_in_outage"]) in [
        (200, "unavailable"),  # the surviving worker
        (503, None),  # the replacement, had it taken the probe's connection
    ]
    assert result.recovery_s is not None  # the replacement serves once the repository is back
    log = (tmp_path / "service.log").read_text()
    # Logged once by each worker that saw it, not at every retry.
    assert 1 <= log.count("cannot read the model repository") <= 2
    assert "can be read again" in log


def test_a_corrupt_version_is_kept_out_and_survives_a_restart(service: faults.Service) -> None:
    restarted: list[dict] = []

    def restart() -> tuple[float, dict]:
        with faults.service(service.repo, service.repo.parent / "restart.log") as (again, ready_s):
            _, body, _ = again.get("/readyz")
            status, _, _ = again.get("/generate?seed=1&model=tiny")
            restarted.append({**body, "image_status": status})
            return ready_s, body

    result = faults.run_corrupt(service, options(), restart)
    assert result.failed == 0
    version = result.notes["version"]
    for rejected in (result.notes["rejected"], restarted[0]["rejected"]):
        assert [(r["model"], r["version"]) for r in rejected] == [("tiny", version)]
        assert "sha256 of model.onnx" in rejected[0]["reason"]
    assert restarted[0]["image_status"] == 200  # the restart serves the good versions


def test_stalled_connections_do_not_hold_other_clients(service: faults.Service) -> None:
    result = faults.run_stalled(service, options(duration=3.0))
    assert result.failed == 0
    assert result.requests > 10 * CLIENTS
    assert result.notes["reopened"] > 0  # the service timed stalled ones out (GAN_CLIENT_TIMEOUT)


def slow_onnx() -> bytes:
    """z -> images like the tiny models, plus a Loop of int(1000 * max|z|) empty steps.

    Seeds' noise (|z| < 10) costs a few thousand steps; noise with a value of 1e6 costs a
    billion, far longer than any time limit: a request that does not finish by itself.
    """
    rng = np.random.default_rng(0)
    size = int(np.prod(SHAPE))
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["count_in", "one"], ["count_out"]),
        ],
        "steps",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("count_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("count_out", TensorProto.FLOAT, []),
        ],
        [numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")],
    )
    inits = [
        numpy_helper.from_array(rng.normal(0, 1, (LATENT, size)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([-1, *SHAPE], dtype=np.int64), "target_shape"),
        numpy_helper.from_array(np.array(1000.0, dtype=np.float32), "scale"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        numpy_helper.from_array(np.array(True), "true"),
    ]
    nodes = [
        helper.make_node("Abs", ["z"], ["z_abs"]),
        helper.make_node("ReduceMax", ["z_abs"], ["z_max"], keepdims=0),
        helper.make_node("Mul", ["z_max", "scale"], ["steps_f"]),
        helper.make_node("Cast", ["steps_f"], ["steps"], to=TensorProto.INT64),
        helper.make_node("Loop", ["steps", "true", "zero"], ["count"], body=body),
        helper.make_node("Mul", ["count", "zero"], ["nothing"]),
        helper.make_node("MatMul", ["z", "w"], ["logits"]),
        helper.make_node("Add", ["logits", "nothing"], ["shifted"]),
        helper.make_node("Sigmoid", ["shifted"], ["flat"]),
        helper.make_node("Reshape", ["flat", "target_shape"], ["images"]),
    ]
    graph = helper.make_graph(
        nodes, "slow_generator",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", LATENT])],
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", *SHAPE])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def write_slow_model(models_dir: Path) -> None:
    data = slow_onnx()
    target = models_dir / "slow" / "1"
    target.mkdir(parents=True)
    (target / "model.onnx").write_bytes(data)
    (target / "model.json").write_text(json.dumps(metadata("slow", 1, data)))


def test_a_request_past_the_time_limit_gets_a_json_503_and_the_service_goes_on(
    tmp_path: Path, gunicorn: Callable[..., Server]
) -> None:
    repo = tmp_path / "models"
    write_model(repo, "tiny", 1)
    write_slow_model(repo)
    server = gunicorn(GAN_MODELS_DIR=str(repo), GAN_WORKERS="1", GAN_TIMEOUT="3",
                      GAN_DEFAULT_MODEL="tiny")
    fast = requests.post(f"{server.url}/generate", json={"model": "slow", "seed": 1}, timeout=30)
    assert fast.status_code == 200  # seeds' noise: a few thousand steps
    before = int(fast.headers["X-Worker-Pid"])
    noise = [[1e6] + [0.0] * (LATENT - 1)]
    started = time.monotonic()
    slow = requests.post(f"{server.url}/generate", json={"model": "slow", "noise": noise},
                         timeout=30)
    elapsed = time.monotonic() - started
    assert slow.status_code == 503
    assert slow.headers["Content-Type"] == "application/json"
    assert slow.headers["Retry-After"] == "1"
    assert slow.json()["error"]["code"] == "timeout"
    assert "within 2 s" in slow.json()["error"]["message"]  # GAN_TIMEOUT less a second
    assert elapsed < 30  # answered by the service's limit, not by the client's timeout
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the replacement worker boots
        try:
            after = requests.get(f"{server.url}/generate?seed=1", timeout=10)
            break
        except requests.ConnectionError:
            time.sleep(0.1)  # polling interval while the master forks a new worker
    assert after.status_code == 200
    assert int(after.headers["X-Worker-Pid"]) != before
    assert server.process.poll() is None
    log = server.stop()
    assert "stopping a request after" in log
    assert "WORKER TIMEOUT" not in log  # the service's own limit came first


def test_replacement_worker_without_repository_leaves_connections_to_ready_ones(
    tmp_path: Path, gunicorn: Callable[..., Server]
) -> None:
    """Both workers gone while the repository is away: a replacement that cannot load
    answers new connections (no ready worker takes them) with 503 not_ready, then serves."""
    repo = write_repository(tmp_path / "models")
    server = gunicorn(GAN_MODELS_DIR=str(repo), GAN_WORKERS="1")
    first = requests.get(f"{server.url}/healthz", timeout=10).json()["pid"]
    away = repo.with_name("away")
    repo.rename(away)
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 60
    ready = None
    while time.monotonic() < deadline:
        try:
            ready = requests.get(f"{server.url}/readyz", timeout=10)
            break
        except requests.ConnectionError:
            time.sleep(0.1)  # polling interval while the master forks a new worker
    assert ready is not None and ready.status_code == 503
    assert ready.json()["error"]["code"] == "not_ready"
    assert "repository cannot be read" in ready.json()["error"]["message"]
    away.rename(repo)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if requests.get(f"{server.url}/readyz", timeout=10).status_code == 200:
            break
        time.sleep(0.1)  # polling interval: the worker retries every second
    assert requests.get(f"{server.url}/generate?seed=1", timeout=10).status_code == 200
    assert server.process.poll() is None

