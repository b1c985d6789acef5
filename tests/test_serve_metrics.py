"""Prometheus metrics at /metrics: exact totals across gunicorn workers, and dead workers."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient
from helpers.server import SPREAD_ATTEMPTS, Server, assert_start_refused, start_gunicorn
from helpers.tiny_models import write_repository
from prometheus_client.parser import text_string_to_metric_families

from serve.metrics import BUCKETS
from serve.repository import read_spec

FORMATS = ("json", "png", "npy")


def scrape(server: Server) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of /metrics by sample name, parsed with prometheus_client's own parser."""
    response = requests.get(f"{server.url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum of the ``name`` samples whose labels include ``labels``."""
    return sum(v for ls, v in samples.get(name, []) if labels.items() <= ls.items())


def spread_generate(server: Server, minimum: int) -> tuple[Counter[str], Counter[str], int]:
    """POST /generate on fresh connections until both workers answered and ``minimum`` were
    sent: requests per worker pid, per format, and the images asked for."""
    pids: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    images = 0
    for i in range(SPREAD_ATTEMPTS):
        if len(pids) == 2 and i >= minimum:
            break
        n, fmt = 1 + i % 3, FORMATS[i % len(FORMATS)]
        response = requests.post(
            f"{server.url}/generate", json={"seed": i, "n": n, "format": fmt},
            headers={"Connection": "close"}, timeout=30,
        )
        assert response.status_code == 200, response.text
        pids[response.headers["X-Worker-Pid"]] += 1
        formats[fmt] += 1
        images += n
    assert len(pids) == 2, f"only worker {list(pids)} answered {SPREAD_ATTEMPTS} requests"
    return pids, formats, images


def two_workers(
    repo: Path, tmp_path: Path, gunicorn: Callable[..., Server]
) -> tuple[Server, Path]:
    """Two workers on the tiny models, their metrics in a directory of the test's own."""
    metrics_dir = tmp_path / "metrics"
    server = gunicorn(GAN_MODELS_DIR=str(repo), GAN_WORKERS="2", GAN_DEFAULT_MODEL="tiny",
                      GAN_METRICS_DIR=str(metrics_dir), GAN_RELOAD_INTERVAL="0")
    return server, metrics_dir


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repository(tmp_path_factory.mktemp("metrics") / "models")


def test_counts_add_up_across_workers(
    repo: Path, tmp_path: Path, gunicorn: Callable[..., Server]
) -> None:
    server, metrics_dir = two_workers(repo, tmp_path, gunicorn)
    pids, formats, images = spread_generate(server, minimum=30)
    sent = sum(pids.values())
    for _ in range(3):
        assert requests.post(f"{server.url}/generate", json={"seeds": []}, timeout=30).status_code == 422
        assert requests.get(f"{server.url}/no/such/path", timeout=30).status_code == 404
    for seed in range(2):  # the GET route: a PNG grid
        assert requests.get(f"{server.url}/generate?seed={seed}&n=4", timeout=30).status_code == 200
    assert requests.get(f"{server.url}/models/tiny", timeout=30).status_code == 200

    samples = scrape(server)
    route = {"route": "/generate"}
    assert total(samples, "gan_http_requests_total", **route, method="POST", status="200") == sent
    assert total(samples, "gan_http_requests_total", **route, method="POST", status="422") == 3
    assert total(samples, "gan_http_requests_total", **route, method="GET", status="200") == 2
    assert total(samples, "gan_http_requests_total", route="unmatched", status="404") == 3
    # Routes are Flask's rules, not the paths asked for: bounded label values.
    assert total(samples, "gan_http_requests_total", route="/models/<name>") == 1
    assert not any("/no/such" in ls["route"] or "tiny" in ls["route"]
                   for ls, _ in samples["gan_http_requests_total"])

    assert total(samples, "gan_images_generated_total", model="tiny", version="2") == images + 8
    assert total(samples, "gan_http_request_duration_seconds_count", **route) == sent + 3 + 2
    assert total(samples, "gan_inference_duration_seconds_count", model="tiny") == sent + 2
    for fmt in FORMATS:
        expected = formats[fmt] + (2 if fmt == "png" else 0)
        assert total(samples, "gan_encoding_duration_seconds_count", format=fmt) == expected
    # Buckets from 0.1 ms to 10 s; the +Inf bucket is the count.
    buckets = [ls for ls, _ in samples["gan_http_request_duration_seconds_bucket"]
               if ls["route"] == "/generate"]
    assert [float(b["le"]) for b in buckets] == [*BUCKETS, float("inf")]
    assert total(samples, "gan_http_request_duration_seconds_bucket", **route, le="+Inf") == sent + 5

    # Each worker loaded the policy's versions (tiny 2 and cond 1) at start, and holds them.
    assert total(samples, "gan_model_loads_total") == 4
    assert total(samples, "gan_model_versions_rejected_total") == 0
    tiny2 = read_spec(repo / "tiny" / "2", "tiny", 2)
    assert total(samples, "gan_model_versions_loaded", model="tiny", version="2",
                 sha256=tiny2.sha256[:12]) == 2
    assert total(samples, "gan_model_versions_loaded", model="cond", version="1") == 2
    # Both workers wrote their own files into GAN_METRICS_DIR.
    for pid in pids:
        assert (metrics_dir / f"counter_{pid}.db").exists()
        assert (metrics_dir / f"gauge_livesum_{pid}.db").exists()


def test_killed_worker_is_marked_dead(
    repo: Path, tmp_path: Path, gunicorn: Callable[..., Server]
) -> None:
    server, metrics_dir = two_workers(repo, tmp_path, gunicorn)
    pids, _, images = spread_generate(server, minimum=10)
    sent = sum(pids.values())
    victim = int(next(iter(pids)))
    assert (metrics_dir / f"gauge_livesum_{victim}.db").exists()
    os.kill(victim, signal.SIGKILL)

    # gunicorn reaps it (child_exit) and forks a replacement: wait until a new pid answers.
    deadline = time.monotonic() + 60
    seen: set[str] = set()
    while not seen - set(pids):
        assert time.monotonic() < deadline, "no replacement worker answered"
        try:
            response = requests.get(f"{server.url}/healthz", headers={"Connection": "close"},
                                    timeout=5)
            seen.add(response.headers["X-Worker-Pid"])
        except requests.ConnectionError:
            pass
        time.sleep(0.05)  # polling interval, not an assertion

    samples = scrape(server)
    # The dead worker's live gauge is gone: two live workers hold each version, not three.
    assert not (metrics_dir / f"gauge_livesum_{victim}.db").exists()
    assert total(samples, "gan_model_versions_loaded", model="tiny", version="2") == 2
    assert total(samples, "gan_model_versions_loaded", model="cond", version="1") == 2
    # What it served still counts: counters and histograms are totals over the service's life.
    assert (metrics_dir / f"counter_{victim}.db").exists()
    generate = {"route": "/generate", "method": "POST", "status": "200"}
    assert total(samples, "gan_http_requests_total", **generate) == sent
    assert total(samples, "gan_images_generated_total", model="tiny") == images
    assert total(samples, "gan_http_request_duration_seconds_count", route="/generate") == sent
    assert total(samples, "gan_model_loads_total") == 6  # three workers booted, two versions each


def test_workers_replaced_by_a_hup_are_marked_dead(
    repo: Path, tmp_path: Path, gunicorn: Callable[..., Server]
) -> None:
    # A HUP re-reads the config file and replaces every worker: child_exit must still work.
    server, metrics_dir = two_workers(repo, tmp_path, gunicorn)
    old, _, _ = spread_generate(server, minimum=4)
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while any((metrics_dir / f"gauge_livesum_{pid}.db").exists() for pid in old):
        assert time.monotonic() < deadline, "the old workers' gauges are still there"
        time.sleep(0.05)  # polling interval, not an assertion
    new, _, _ = spread_generate(server, minimum=4)  # both new workers are up
    assert not set(new) & set(old)
    samples = scrape(server)
    assert total(samples, "gan_model_versions_loaded", model="tiny", version="2") == 2
    assert total(samples, "gan_http_requests_total", route="/generate") == sum(
        old.values()) + sum(new.values())


def test_metrics_without_gunicorn(client: FlaskClient) -> None:
    # One process (the test client, flask run): the figures are this process's own.
    assert client.post("/generate", json={"seeds": [1, 2]}).status_code == 200
    for method in ("BREW", "X" * 50):  # any token is a method: label values stay bounded
        assert client.open("/healthz", method=method).status_code == 405
    response = client.get("/metrics")
    assert response.status_code == 200
    families = list(text_string_to_metric_families(response.get_data(as_text=True)))
    methods = {s.labels["method"] for f in families if f.name == "gan_http_requests"
               for s in f.samples if s.labels["route"] == "/healthz"}
    assert "other" in methods and methods <= {"GET", "HEAD", "other"}  # earlier tests' GETs
    names = {f.name for f in families}
    assert {"gan_http_requests", "gan_images_generated", "gan_model_versions_loaded",
            "gan_http_request_duration_seconds"} <= names


def test_default_metrics_dir_is_removed_at_exit(repo: Path, tmp_path: Path) -> None:
    server = start_gunicorn(tmp_path, GAN_MODELS_DIR=str(repo), GAN_WORKERS="1")
    log = server.stop()
    line = next(line for line in log.splitlines() if "metrics in " in line)
    path = Path(line.split("metrics in ", 1)[1].strip())
    assert path.name.startswith("gan-metrics-")
    assert not path.exists()


def test_unwritable_metrics_dir_stops_gunicorn(repo: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert_start_refused("GAN_METRICS_DIR", GAN_MODELS_DIR=str(repo), GAN_METRICS_DIR=str(blocker / "m"))


def test_registry_counts_loads_reloads_and_rejections(models_dir: Path) -> None:
    from helpers.tiny_models import corrupt_sha, write_model

    from serve import metrics
    from serve.app import create_app

    def value(name: str, **labels: str) -> float:
        return metrics.LOCAL.get_sample_value(name, labels) or 0.0

    before = {
        "loads": value("gan_model_loads_total", model="tiny"),
        "reloads": value("gan_model_reloads_total", result="ok"),
        "rejected": value("gan_model_versions_rejected_total", model="tiny"),
    }
    app = create_app({"GAN_MODELS_DIR": str(models_dir), "GAN_RELOAD_INTERVAL": "0",
                      "GAN_VERSION_CACHE": "0"})
    tiny2 = read_spec(models_dir / "tiny" / "2", "tiny", 2)
    assert value("gan_model_versions_loaded", model="tiny", version="2",
                 sha256=tiny2.sha256[:12]) == 1
    write_model(models_dir, "tiny", 3, weight_seed=3)
    corrupt_sha(write_model(models_dir, "tiny", 4, weight_seed=4))
    app.extensions["gan"].registry.reload()
    tiny3 = read_spec(models_dir / "tiny" / "3", "tiny", 3)
    assert value("gan_model_loads_total", model="tiny") == before["loads"] + 2  # 2, then 3
    assert value("gan_model_reloads_total", result="ok") == before["reloads"] + 1
    assert value("gan_model_versions_rejected_total", model="tiny") == before["rejected"] + 1
    assert value("gan_model_versions_loaded", model="tiny", version="3",
                 sha256=tiny3.sha256[:12]) == 1
    assert value("gan_model_versions_loaded", model="tiny", version="2",
                 sha256=tiny2.sha256[:12]) == 0  # left the policy, no cache: unloaded
