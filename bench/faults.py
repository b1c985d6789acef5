"""Fault benchmark: what one fault costs the service's clients, and how soon it is whole again.

Starts the service (gunicorn with serve/gunicorn.conf.py, two workers) on a copy of a model
repository and drives it with client threads on keep-alive connections, each asking
``POST /generate`` for one new seed after another, while one fault happens:

- ``baseline``: no fault, the figures the others compare with (same service, same run);
- ``sigkill``: a worker is killed (SIGKILL); gunicorn forks a replacement;
- ``repository``: the repository is renamed away (a volume being remounted), a worker is
  killed meanwhile, and the repository comes back after ``--outage`` seconds;
- ``corrupt``: a corrupt version (a model.json whose sha256 disagrees with model.onnx) is
  published as the default model's next version, then the service is restarted with it;
- ``stalled``: ``--stalled`` connections send request headers one byte a second (slowloris),
  reopened as the service times them out.

For each: requests, failed requests (any status but 200, or a connection error), p50 and p99
latency of the clients, and ``recovery_s``: from the fault (``sigkill``) or the repository's
return (``repository``) to the first image served by the replacement worker; for
``corrupt``, the restart's time to ready. A keep-alive client whose connection the killed
worker held loses at most its request in flight, or its next one on that connection.

    python bench/faults.py --models-dir models --duration 6 --json out/faults.jsonl
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
sys.path.insert(0, str(ROOT / "bench"))

from peers import gunicorn, process_tree  # noqa: E402
from service import free_port, service_command, without_gan  # noqa: E402

from serve.openapi import PID_HEADER  # noqa: E402
from serve.repository import ONNX_FILE, find_versions  # noqa: E402

SCENARIOS = ("baseline", "sigkill", "repository", "corrupt", "stalled")
GRACE = 30.0  # seconds a stopping service gets before SIGKILL
WAIT = 20.0  # seconds to wait for a recovery before calling it failed: a bound, not a figure


@dataclass
class Call:
    """One request of a client: when it started and ended (perf_counter), its status
    (0: a connection error) and the worker that answered."""

    start: float
    end: float
    status: int
    pid: int | None


@dataclass
class Figures:
    """The result of one scenario."""

    scenario: str
    requests: int
    failed: int
    p50_ms: float
    p99_ms: float
    recovery_s: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


class Load:
    """Client threads on keep-alive connections, each POSTing /generate with new seeds."""

    def __init__(self, port: int, clients: int, model: str) -> None:
        self.port = port
        self.model = model
        self.calls: list[Call] = []
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def _client(self, index: int) -> None:
        connection = None
        seed = index * 10**8
        while not self.stopping.is_set():
            seed += 1
            body = json.dumps({"model": self.model, "seed": seed}).encode()
            started = time.perf_counter()
            status, pid = 0, None
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                connection.request("POST", "/generate", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                status = response.status
                pid = int(response.getheader(PID_HEADER) or 0) or None
                if response.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException):
                if connection is not None:
                    connection.close()
                connection = None
            self.calls.append(Call(started, time.perf_counter(), status, pid))
        if connection is not None:
            connection.close()


def figures(scenario: str, calls: list[Call], **extra: Any) -> Figures:
    """Count and summarise a scenario's calls."""
    latencies = sorted((c.end - c.start) * 1000 for c in calls)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    return Figures(
        scenario=scenario,
        requests=len(calls),
        failed=sum(c.status != 200 for c in calls),
        p50_ms=statistics.median(latencies) if latencies else 0.0,
        p99_ms=p99,
        **extra,
    )


@dataclass
class Service:
    """A running service: its master's pid, port and repository."""

    pid: int
    port: int
    repo: Path

    def workers(self) -> set[int]:
        return set(process_tree(self.pid)[1:])

    def get(self, path: str) -> tuple[int, dict[str, Any], int | None]:
        """GET ``path`` on a new connection: status, JSON body (or {}), answering worker."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            data = response.read()
            body = json.loads(data) if response.getheader("Content-Type") == "application/json" else {}
            return response.status, body, int(response.getheader(PID_HEADER) or 0) or None
        finally:
            connection.close()

    def replaced(self, old: set[int], model: str) -> bool:
        """Whether a worker not in ``old`` serves an image (asked on new connections: the
        clients' keep-alive connections stay with the workers that accepted them)."""
        try:
            status, _, pid = self.get(f"/generate?seed=1&model={model}")
        except OSError:
            return False
        return status == 200 and pid not in old


@contextmanager
def service(repo: Path, log: Path, **settings: str) -> Iterator[tuple[Service, float]]:
    """The service on ``repo`` with two workers; yields it and its seconds to ready."""
    port = free_port()
    env = without_gan() | {"GAN_MODELS_DIR": str(repo), "GAN_WORKERS": "2", "GAN_ACCESS_LOG": "off"}
    env |= settings
    url = f"http://127.0.0.1:{port}"
    with gunicorn("service", service_command(port), env, log, f"{url}/readyz", f"{url}/generate?seed=0",
                  GRACE) as (pid, cold):
        yield Service(pid, port, repo), cold["ready_s"]


def wait_until(check: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Poll ``check`` every 10 ms until it returns something true; None after ``timeout``."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.01)
    return None


def copy_repository(source: Path, target: Path) -> Path:
    """Hard links of the repository's files (cheap; export never rewrites a file in place)."""
    shutil.copytree(source, target, copy_function=os.link)
    return target


# --- Scenarios ---------------------------------------------------------------------------------

def run_baseline(svc: Service, args: argparse.Namespace) -> Figures:
    with Load(svc.port, args.clients, args.model) as load:
        time.sleep(args.duration)
    return figures("baseline", load.calls)


def run_sigkill(svc: Service, args: argparse.Namespace) -> Figures:
    with Load(svc.port, args.clients, args.model) as load:
        time.sleep(args.duration / 3)
        before = svc.workers()
        killed = time.perf_counter()
        os.kill(min(before), signal.SIGKILL)
        served = wait_until(lambda: svc.replaced(before, args.model) and time.perf_counter())
        time.sleep(max(0.0, args.duration * 2 / 3 - (time.perf_counter() - killed)))
    recovery = None if served is None else served - killed
    return figures("sigkill", load.calls, recovery_s=recovery, notes={"workers": len(svc.workers())})


def run_repository(svc: Service, args: argparse.Namespace) -> Figures:
    away = svc.repo.with_name(svc.repo.name + ".away")
    with Load(svc.port, args.clients, args.model) as load:
        time.sleep(args.duration / 3)
        before = svc.workers()
        svc.repo.rename(away)
        try:
            os.kill(min(before), signal.SIGKILL)
            time.sleep(args.outage)
            alive_in_outage = len(svc.workers())
            ready_in_outage = svc.get("/readyz")
        finally:
            away.rename(svc.repo)
        back = time.perf_counter()
        served = wait_until(lambda: svc.replaced(before, args.model) and time.perf_counter())
        time.sleep(max(0.0, args.duration / 3 - (time.perf_counter() - back)))
    recovery = None if served is None else served - back
    notes = {"workers_in_outage": alive_in_outage, "readyz_in_outage": ready_in_outage[0],
             "repository_in_outage": ready_in_outage[1].get("repository")}
    return figures("repository", load.calls, recovery_s=recovery, notes=notes)


def publish_corrupt_version(repo: Path, model: str) -> int:
    """Copy the model's highest version as the next one, with a sha256 that disagrees."""
    versions = find_versions(repo)[model]
    source = versions[max(versions)]
    version = max(versions) + 1
    staging = repo / model / f".{version}.tmp"
    shutil.copytree(source, staging)
    meta = json.loads((staging / "model.json").read_text())
    meta["version"] = version
    meta["onnx"]["sha256"] = "0" * 64
    (staging / "model.json").write_text(json.dumps(meta))
    assert (staging / ONNX_FILE).is_file()
    staging.rename(repo / model / str(version))
    return version


def run_corrupt(svc: Service, args: argparse.Namespace, restart: Callable[[], Any]) -> Figures:
    with Load(svc.port, args.clients, args.model) as load:
        time.sleep(args.duration / 3)
        version = publish_corrupt_version(svc.repo, args.model)
        time.sleep(args.duration * 2 / 3)  # several rescans (GAN_RELOAD_INTERVAL=1)
    status, ready, _ = svc.get("/readyz")
    restarted_s, restarted_ready = restart()
    notes = {"version": version, "readyz": status,
             "rejected": ready.get("rejected"), "restart_readyz": restarted_ready}
    return figures("corrupt", load.calls, recovery_s=restarted_s, notes=notes)


class Stalled:
    """Connections that send a request's headers one byte a second, reopened when closed."""

    HEAD = b"POST /generate HTTP/1.1\r\nHost: stalled\r\nContent-Type: application/json\r\n"

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.stopping = threading.Event()
        self.reopened = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Stalled:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join()

    def _open(self) -> tuple[socket.socket, int]:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5), 0

    def _run(self) -> None:
        sockets = [self._open() for _ in range(self.count)]
        while not self.stopping.wait(1.0):
            for i, (sock, sent) in enumerate(sockets):
                try:
                    if self._answered(sock):  # the service's 408 (or a close): open another
                        raise ConnectionResetError
                    sock.send(self.HEAD[sent % len(self.HEAD): sent % len(self.HEAD) + 1])
                    sockets[i] = (sock, sent + 1)
                except OSError:
                    sock.close()
                    sockets[i] = self._open()
                    self.reopened += 1
        for sock, _ in sockets:
            sock.close()

    @staticmethod
    def _answered(sock: socket.socket) -> bool:
        """Whether the service has answered (or closed) the connection: something to read."""
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable)


def run_stalled(svc: Service, args: argparse.Namespace) -> Figures:
    with Stalled(svc.port, args.stalled) as stalled:
        time.sleep(1.0)  # every stalled connection open and sending
        with Load(svc.port, args.clients, args.model) as load:
            time.sleep(args.duration)
    return figures("stalled", load.calls, notes={"stalled": args.stalled,
                                                 "reopened": stalled.reopened})


# --- Driver ------------------------------------------------------------------------------------

def run(args: argparse.Namespace, scenarios: tuple[str, ...] = SCENARIOS) -> list[Figures]:
    """Run the scenarios in order on one service (``corrupt`` restarts it); their figures."""
    results = []
    with tempfile.TemporaryDirectory(prefix="gan-faults-") as tmp:
        repo = copy_repository(args.models_dir, Path(tmp) / "models")
        settings = {"GAN_RELOAD_INTERVAL": "1", "GAN_CLIENT_TIMEOUT": str(args.client_timeout)}
        logs = Path(tmp)
        with service(repo, logs / "service.log", **settings) as (svc, _):
            for name in scenarios:
                if name == "corrupt":
                    def restart() -> tuple[float, dict[str, Any]]:
                        with service(repo, logs / "restart.log", **settings) as (again, ready_s):
                            return ready_s, again.get("/readyz")[1]
                    result = run_corrupt(svc, args, restart)
                else:
                    result = globals()[f"run_{name}"](svc, args)
                print_row(result)
                results.append(result)
    return results


def print_row(f: Figures) -> None:
    recovery = "-" if f.recovery_s is None else f"{f.recovery_s:.2f}"
    print(f"{f.scenario:<11} {f.requests:>8} {f.failed:>6} {f.p50_ms:>8.1f} {f.p99_ms:>8.1f} "
          f"{recovery:>10}  {json.dumps(f.notes)}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="mnist-dcgan", help="the model the clients ask for")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of load a scenario")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--stalled", type=int, default=50)
    parser.add_argument("--outage", type=float, default=2.0,
                        help="seconds the repository is away in the repository scenario")
    parser.add_argument("--client-timeout", type=int, default=10, help="GAN_CLIENT_TIMEOUT")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--json", type=Path, help="append every scenario's figures as JSON lines")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenarios = tuple(s.strip() for s in args.scenarios.split(","))
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        print(f"unknown scenarios: {', '.join(sorted(unknown))}; known: {', '.join(SCENARIOS)}",
              file=sys.stderr)
        return 2
    print(f"{'scenario':<11} {'requests':>8} {'failed':>6} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'recovery s':>10}  notes")
    results = run(args, scenarios)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with args.json.open("a") as out:
            for result in results:
                out.write(json.dumps(asdict(result)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
