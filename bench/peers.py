"""Peer benchmark: the service next to a plain Flask app and V2 (KServe, Triton) servers of one generator.

One command starts the service (gunicorn with serve/gunicorn.conf.py) and the plain baseline
(bench/plain_server.py under gunicorn, the same number of sync workers), optionally drives up
to two servers of the KServe V2 inference protocol (``--v2 URL``, ``--v2-batching URL``, where
URL is like http://127.0.0.1:8300/v2/models/generator), or starts Triton for both
(``--start-triton DIR``, a directory holding Triton's start.sh and stop.sh), and measures
every target on the same scenarios, interleaved: ``for round: for scenario: for target``.

- ``n1-c1``, ``n1-c8``, ``n1-c32``: one image per request at 1, 8 and 32 connections;
  ``n64-c8``: 64 images per request at 8 connections; ``hello-c8``: the HTTP ceiling (the
  plain app's ``/hello``, the service's ``/healthz``, a V2 server's ``/v2/health/live``).
- Every request asks for new seeds: GET ``/generate?seed=S&n=N`` (the service's pinned to the
  model name and version), and for V2 POST ``URL/infer`` with the noise of those seeds as V2
  JSON (64 distinct bodies per n, in turn), asking for the ``images`` output as binary data.
- The load generator is wrk (``bench/generate.lua``) when installed, else, or with
  ``--load python``, client threads with keep-alive connections. It shares the CPUs with
  the servers, as on one host.
- Also: the outputs of seeds 0-63 compared across targets, the cold start (spawn to the first
  200 from ``/readyz``, or the plain app's ``/hello``, and to the first image), and after the
  load the PSS and RSS of each target's process tree. ``--json`` writes every measurement.

    python bench/peers.py --model models/mnist-dcgan/7 --duration 5 --rounds 2 --json out/peers.jsonl
    python bench/peers.py --model models/mnist-dcgan/7 --start-triton DIR --json out/peers.jsonl

The service runs from a temporary repository holding only the chosen version, so every target
serves the same generator (``--repository shipped`` serves the whole models/ directory, as
deployed). GAN_ variables set in the environment reach the service (GAN_MODELS_DIR excepted).

Reading the figures: the V2 peers answer with raw float32 tensors (3 KB an image) where the
service and the plain app encode PNGs, and keep connections alive where gunicorn's sync workers
close each one; the plain app validates nothing. The ``others`` column flags runs that another
job on the host disturbed.
"""

from __future__ import annotations

import argparse
import http.client
import io
import itertools
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from service import START_TIMEOUT, StartError, free_port, log_text, service_command, spawn, stop, wait_ready  # noqa: E402

from serve import imaging, latent  # noqa: E402
from serve.config import ConfigError, cpu_count, load_settings  # noqa: E402
from serve.repository import ModelError, ModelVersion, is_version_name, read_spec  # noqa: E402

LUA_SCRIPT = ROOT / "bench" / "generate.lua"
WRK_TIMEOUT = "10s"  # a request slower than this counts as a wrk timeout error
BODIES = 64  # distinct V2 request bodies per n
SEED_BLOCK = 10**7  # seeds per (round, scenario): rounds and scenarios never repeat a seed


class BenchError(Exception):
    """A target cannot be started or does not answer as it should."""


@dataclass(frozen=True)
class Scenario:
    """What to ask for (``n`` images per request, or the hello route at n=0), at what concurrency."""

    name: str
    n: int
    concurrency: int

    @property
    def label(self) -> str:
        """How the scenario reads in a table title."""
        what = "hello (HTTP ceiling)" if self.n == 0 else f"n={self.n}"
        return f"{what}, {self.concurrency} connection{'s' * (self.concurrency > 1)}"


SCENARIOS = (
    Scenario("n1-c1", 1, 1),
    Scenario("n1-c8", 1, 8),
    Scenario("n1-c32", 1, 32),
    Scenario("n64-c8", 64, 8),
    Scenario("hello-c8", 0, 8),
)


@dataclass(frozen=True)
class Workload:
    """The requests of one run: GET ``path`` with ``{seed}`` filled in, POST ``bodies``, or GET ``url``."""

    url: str  # wrk's URL: the server's root when ``path`` is given
    path: str | None = None
    seed_base: int = 0
    seed_step: int = 1
    bodies: Path | None = None

    @property
    def describe(self) -> str:
        """The requests in one line."""
        if self.bodies is not None:
            return f"POST {self.url} ({self.bodies.name})"
        return f"GET {self.url.rstrip('/')}{self.path or ''}"

    def wrk_env(self) -> dict[str, str]:
        """The variables bench/generate.lua reads."""
        if self.bodies is not None:
            return {"PEERS_BODIES": str(self.bodies)}
        if self.path is not None:
            return {"PEERS_PATH": self.path, "PEERS_SEED_BASE": str(self.seed_base),
                    "PEERS_SEED_STEP": str(self.seed_step)}
        return {}

    def requests(self) -> Iterator[tuple[str, str, bytes | None]]:
        """Method, path and body of request 0, 1, ... (what the Lua script sends)."""
        target = urlsplit(self.url)
        if self.bodies is not None:
            bodies = self.bodies.read_bytes().splitlines()
            yield from (("POST", target.path, body) for body in itertools.cycle(bodies))
        elif self.path is not None:
            for i in itertools.count():
                yield "GET", self.path.replace("{seed}", str(self.seed_base + i * self.seed_step)), None
        else:
            yield from itertools.repeat(("GET", target.path or "/", None))


@dataclass(frozen=True)
class LoadResult:
    """One run's figures, as wrk reports them."""

    requests: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    bytes_read: int

    @property
    def errors(self) -> int:
        """Responses outside 2xx/3xx plus connect, read, write and timeout errors."""
        return self.non_2xx + self.socket_errors


@dataclass
class Target:
    """A server under test: how to ask it for images and for its hello route."""

    name: str
    kind: str  # "service", "plain" or "v2"
    base: str  # scheme://host:port
    describe: str
    pid: int | None = None
    generate_url: str = ""  # GET path prefix (service, plain) or the V2 model URL
    hello_path: str = ""
    cold: dict[str, float] = field(default_factory=dict)

    def workload(self, scenario: Scenario, seed_base: int, bodies: dict[int, Path]) -> Workload:
        """The requests of ``scenario`` for this target."""
        if scenario.n == 0:
            return Workload(self.base + self.hello_path)
        if self.kind == "v2":
            return Workload(self.generate_url + "/infer", bodies=bodies[scenario.n])
        path = f"{self.generate_url}n={scenario.n}&seed={{seed}}"
        return Workload(self.base + "/", path=path, seed_base=seed_base, seed_step=scenario.n)


# --- load generators ------------------------------------------------------------------------

_TIME_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}
_BYTES = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}


def _ms(value: str, unit: str) -> float:
    """A wrk time (value and unit) in milliseconds."""
    return float(value) * _TIME_MS[unit]


def parse_wrk(text: str) -> LoadResult:
    """The figures in wrk's ``--latency`` output."""

    def find(pattern: str) -> re.Match[str] | None:
        return re.search(pattern, text, re.MULTILINE)

    total = find(r"^\s*(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read")
    rate = find(r"^Requests/sec:\s*([\d.]+)")
    p50 = find(r"^\s*50%\s+([\d.]+)(\w+)\s*$")
    p99 = find(r"^\s*99%\s+([\d.]+)(\w+)\s*$")
    if not (total and rate and p50 and p99):
        raise BenchError(f"cannot read wrk's output:\n{text}")
    sockets = find(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
    non_2xx = find(r"Non-2xx or 3xx responses: (\d+)")
    return LoadResult(
        requests=int(total[1]),
        seconds=_ms(total[2], total[3]) / 1000,
        requests_per_s=float(rate[1]),
        p50_ms=_ms(p50[1], p50[2]),
        p99_ms=_ms(p99[1], p99[2]),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(map(int, sockets.groups())) if sockets else 0,
        bytes_read=round(float(total[4]) * _BYTES[total[5]]),
    )


def wrk_seconds(duration: float) -> int:
    """wrk takes whole seconds: the duration it runs for ``duration``."""
    return max(1, math.ceil(duration))


def run_wrk(workload: Workload, concurrency: int, duration: float) -> LoadResult:
    """One wrk run (one thread, ``concurrency`` connections) with bench/generate.lua."""
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{wrk_seconds(duration)}s", "--latency",
               "--timeout", WRK_TIMEOUT, "-s", str(LUA_SCRIPT), workload.url]
    done = subprocess.run(command, env=os.environ | workload.wrk_env(), capture_output=True, text=True,
                          timeout=wrk_seconds(duration) + 60)
    if done.returncode != 0:
        raise BenchError(f"wrk exited with {done.returncode}: {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def run_python(workload: Workload, concurrency: int, duration: float) -> LoadResult:
    """``concurrency`` client threads, each on one keep-alive connection, for ``duration`` seconds."""
    target = urlsplit(workload.url)
    requests = workload.requests()
    lock = threading.Lock()
    latencies: list[float] = []
    counts = {"non_2xx": 0, "socket_errors": 0, "bytes": 0}
    stop_at = time.monotonic() + duration

    def client() -> None:
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        while time.monotonic() < stop_at:
            with lock:
                method, path, body = next(requests)
            started = time.perf_counter()
            try:
                connection.request(method, path, body, headers if body else {})
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                connection.close()
                with lock:
                    counts["socket_errors"] += 1
                continue
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                counts["non_2xx"] += not 200 <= response.status < 400
                counts["bytes"] += len(data)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000 if latencies else (math.nan, math.nan)
    return LoadResult(len(latencies), seconds, len(latencies) / seconds, float(p50), float(p99),
                      counts["non_2xx"], counts["socket_errors"], counts["bytes"])


LOADERS = {"wrk": run_wrk, "python": run_python}


# --- processes --------------------------------------------------------------------------------

def request(url: str, method: str = "GET", body: bytes | None = None,
            timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection: status, headers, body."""
    target = urlsplit(url)
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=timeout)
    path = target.path + (f"?{target.query}" if target.query else "")
    try:
        connection.request(method, path or "/", body, {"Content-Type": "application/json"} if body else {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _stopped(name: str, pid: int, started: float) -> None:
    """Say how long a target took to stop."""
    print(f"stopped {name} (pid {pid}) in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


@contextmanager
def gunicorn(name: str, command: list[str], env: dict[str, str], log: Path, ready: str,
             first_image: str, grace: float) -> Iterator[tuple[int, dict[str, float]]]:
    """Spawn gunicorn, time its cold start, yield PID and times; at exit SIGTERM (SIGKILL after grace s).

    The start, the readiness poll (every 10 ms) and the stop are bench/service.py's.
    """
    started = time.perf_counter()
    process = spawn(command, env, log, new_session=True)  # Ctrl-C reaches us; we stop it
    try:
        try:
            cold = {"ready_s": wait_ready(ready, process, log, started=started)}
        except StartError as e:
            raise BenchError(str(e)) from None
        if request(first_image)[0] != 200:
            raise BenchError(f"GET {first_image} failed:\n{log_text(log)}")
        cold["first_image_s"] = time.perf_counter() - started
        yield process.pid, cold
    finally:
        stopping = time.perf_counter()
        stop(process, grace)
        _stopped(name, process.pid, stopping)


@contextmanager
def triton(directory: Path, onnx: Path, batching: bool) -> Iterator[tuple[str, int, dict[str, float]]]:
    """Triton from ``DIRECTORY/start.sh``: yield its model URL, PID and start times; stop.sh at exit."""
    port = free_port()
    command = [str(directory / "start.sh"), str(onnx), str(port)] + ["--batching"] * batching
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT,
                          start_new_session=True)
    if done.returncode != 0 or not done.stdout.strip().isdigit():
        raise BenchError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    pid = int(done.stdout.split()[-1])
    cold = {"start_script_s": time.perf_counter() - started}
    reported = re.search(r"ready .* after (\d+) ms", done.stderr)
    if reported:
        cold["ready_s"] = int(reported[1]) / 1000
    try:
        yield f"http://127.0.0.1:{port}/v2/models/generator", pid, cold
    finally:
        stopping = time.perf_counter()
        subprocess.run([str(directory / "stop.sh"), str(pid)], capture_output=True, timeout=60)
        _stopped(directory.name + (" --batching" if batching else ""), pid, stopping)


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children[int(stat.rsplit(")", 1)[1].split()[1])].append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children[current]
    return tree


def memory(pid: int) -> dict[str, float]:
    """PSS and RSS in MiB summed over the process tree of ``pid`` (smaps_rollup), and its size."""
    totals = {"Pss": 0, "Rss": 0}
    processes = 0
    for member in process_tree(pid):
        try:
            rollup = Path(f"/proc/{member}/smaps_rollup").read_text()
        except OSError:
            continue
        processes += 1
        for key in totals:
            totals[key] += int(re.search(rf"^{key}:\s+(\d+) kB", rollup, re.MULTILINE)[1])
    return {"pss_mib": totals["Pss"] / 1024, "rss_mib": totals["Rss"] / 1024, "processes": processes}


def cpu_seconds(roots: list[int]) -> tuple[float, float]:
    """Busy CPU seconds so far of the machine and of the process trees of ``roots`` (with reaped children)."""
    machine = sum(map(int, Path("/proc/stat").read_text().split()[1:4]))
    ours = 0
    for pid in {member for root in roots for member in process_tree(root)}:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ours += sum(map(int, fields[11:15]))  # utime, stime, cutime, cstime
    tick = os.sysconf("SC_CLK_TCK")
    return machine / tick, ours / tick


# --- requests and outputs ---------------------------------------------------------------------

def v2_body(spec: ModelVersion, seeds: range, label_shape: str) -> str:
    """A V2 JSON infer request for the noise of ``seeds`` (and their labels), images as binary data."""
    z = latent.noise_for_seeds(seeds, spec.latent_size)
    inputs = [f'{{"name":"z","shape":[{len(seeds)},{spec.latent_size}],"datatype":"FP32",'
              f'"data":[{",".join(map(str, z.ravel()))}]}}']
    if spec.classes is not None:
        labels = latent.labels_for_seeds(seeds, len(spec.classes))
        shape = [len(seeds), 1] if label_shape == "n1" else [len(seeds)]
        inputs.append(json.dumps({"name": "labels", "shape": shape, "datatype": "INT64",
                                  "data": labels.tolist()}, separators=(",", ":")))
    outputs = '[{"name":"images","parameters":{"binary_data":true}}]'
    return f'{{"inputs":[{",".join(inputs)}],"outputs":{outputs}}}'


def write_bodies(spec: ModelVersion, n: int, label_shape: str, path: Path) -> Path:
    """64 bodies of n images each (seeds 0 .. 64n-1, body i holding i*n .. i*n+n-1), one per line."""
    path.write_text("".join(v2_body(spec, range(i * n, i * n + n), label_shape) + "\n"
                            for i in range(BODIES)))
    return path


def v2_images(headers: dict[str, str], data: bytes) -> np.ndarray:
    """The ``images`` output of a V2 infer response, binary or JSON."""
    size = headers.get("Inference-Header-Content-Length")
    if size is None:
        output = json.loads(data)["outputs"][0]
        return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    output = json.loads(data[: int(size)])["outputs"][0]
    return np.frombuffer(data[int(size):], dtype=np.float32).reshape(output["shape"])


def grid_of(target: Target, spec: ModelVersion, bodies: dict[int, Path]) -> np.ndarray:
    """The uint8 grid of seeds 0-63 from ``target``, as its PNG or as the grid of its V2 tensor."""
    try:
        if target.kind == "v2":
            body = bodies[64].read_bytes().split(b"\n", 1)[0]
            status, headers, data = request(target.generate_url + "/infer", "POST", body)
        else:
            status, headers, data = request(f"{target.base}{target.generate_url}n=64&seed=0")
    except OSError as e:
        raise BenchError(f"{target.name} ({target.base}): {e}") from None
    if status != 200:
        raise BenchError(f"{target.name} answered {status}: {data[:500]!r}")
    if target.kind == "v2":
        return imaging.grid(imaging.to_uint8(v2_images(headers, data)))[:, :, 0]
    return np.asarray(Image.open(io.BytesIO(data)))


# --- the run ----------------------------------------------------------------------------------

def model_spec(path: Path) -> ModelVersion:
    """The checked spec of a version directory models/<name>/<version>."""
    path = path.resolve()
    if not is_version_name(path.name):
        raise BenchError(f"--model wants a version directory such as models/mnist-dcgan/7, got {path}")
    try:
        return read_spec(path, path.parent.name, int(path.name))
    except ModelError as e:
        raise BenchError(str(e)) from None


def single_version_repository(spec: ModelVersion, tmp: Path) -> Path:
    """A repository holding a copy of ``spec``'s version only."""
    repo = tmp / "models"
    shutil.copytree(spec.path, repo / spec.name / str(spec.version))
    return repo


def start_local(stack: ExitStack, args: argparse.Namespace, spec: ModelVersion, tmp: Path) -> list[Target]:
    """Start the service and the plain app (as many sync workers as the service); their targets."""
    settings = load_settings()
    workers, grace = settings.workers, settings.graceful_timeout + 30
    repo = ROOT / "models" if args.repository == "shipped" else single_version_repository(spec, tmp)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    gen = f"/generate?model={spec.name}&version={spec.version}&"
    # The access log is off, as gunicorn's default is for the plain app (the user may say otherwise).
    env = {"GAN_ACCESS_LOG": "off"} | os.environ | {"GAN_MODELS_DIR": str(repo)}
    pid, cold = stack.enter_context(gunicorn("service", service_command(port), env, tmp / "service.log",
                                             base + "/readyz", f"{base}{gen}n=1&seed=0", grace))
    gan = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("GAN_"))
    service = Target("service", "service", base, f"gunicorn -c serve/gunicorn.conf.py ({workers} workers x "
                     f"{settings.threads} threads), repository {args.repository}{', ' + gan if gan else ''}",
                     pid, gen, "/healthz", cold)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GAN_")}
    env["PLAIN_MODEL"] = str(spec.onnx_path)
    if spec.classes:
        env["PLAIN_CLASSES"] = str(len(spec.classes))
    command = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}",
               "--no-control-socket", "--chdir", "bench", "plain_server:app"]
    pid, cold = stack.enter_context(gunicorn("plain", command, env, tmp / "plain.log", base + "/hello",
                                             f"{base}/generate?n=1&seed=0", 60))
    plain = Target("plain", "plain", base, f"bench/plain_server.py, gunicorn -w {workers} (sync)",
                   pid, "/generate?", "/hello", cold)
    return [service, plain]


def v2_target(name: str, url: str, pid: int | None, describe: str,
              cold: dict[str, float] | None = None) -> Target:
    """A V2 server's target from its model URL."""
    url = url.rstrip("/")
    parts = urlsplit(url)
    if parts.scheme != "http" or "/v2/models/" not in parts.path:
        raise BenchError(f"{name}: want http://host:port/v2/models/NAME, got {url}")
    return Target(name, "v2", f"http://{parts.netloc}", describe, pid, url, "/v2/health/live", cold or {})


def peers(stack: ExitStack, args: argparse.Namespace, spec: ModelVersion) -> list[Target]:
    """The V2 targets: given by URL, or Triton started from ``--start-triton``."""
    if args.start_triton:
        targets = []
        for name, batching in (("v2", False), ("v2-batching", True)):
            url, pid, cold = stack.enter_context(triton(args.start_triton, spec.onnx_path, batching))
            what = "Triton, dynamic batching" if batching else "Triton"
            targets.append(v2_target(name, url, pid, f"{what} ({args.start_triton}/start.sh)", cold))
        return targets
    given = (("v2", args.v2, args.v2_pid), ("v2-batching", args.v2_batching, args.v2_batching_pid))
    return [v2_target(name, url, pid, "V2 server") for name, url, pid in given if url]


def check_outputs(targets: list[Target], spec: ModelVersion, bodies: dict[int, Path]) -> list[dict[str, Any]]:
    """Each target's grid of seeds 0-63 against the service's: pixels that differ, largest difference."""
    reference = grid_of(targets[0], spec, bodies).astype(int)
    rows = []
    for target in targets[1:]:
        grid = grid_of(target, spec, bodies).astype(int)
        if grid.shape != reference.shape:
            raise BenchError(f"{target.name}: grid of shape {grid.shape}, the service's is {reference.shape}")
        diff = np.abs(grid - reference)
        rows.append({"kind": "check", "target": target.name, "pixels_differing": int((diff > 0).sum()),
                     "max_abs_diff": int(diff.max()), "pixels": int(diff.size)})
    return rows


def measure(args: argparse.Namespace, targets: list[Target], bodies: dict[int, Path],
            scenarios: list[Scenario], write: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Warm up, then ``for round: for scenario: for target`` one run each; the records."""
    load = LOADERS[args.load]
    for scenario in scenarios if args.warmup > 0 else ():
        for target in targets:
            load(target.workload(scenario, SEED_BLOCK // 2, bodies), scenario.concurrency, args.warmup)
    records = []
    roots = [os.getpid()] + [t.pid for t in targets if t.pid is not None]
    for round_ in range(args.rounds):
        for s, scenario in enumerate(scenarios):
            seed_base = (round_ * len(scenarios) + s + 1) * SEED_BLOCK
            for target in targets:
                workload = target.workload(scenario, seed_base, bodies)
                machine, ours = cpu_seconds(roots)
                result = load(workload, scenario.concurrency, args.duration)
                machine_after, ours_after = cpu_seconds(roots)
                others = max(0.0, machine_after - machine - (ours_after - ours))
                record = {"kind": "load", "round": round_ + 1, "scenario": scenario.name,
                          "target": target.name, "n": scenario.n, "concurrency": scenario.concurrency,
                          "loader": args.load, "requests_sent": workload.describe, **asdict(result),
                          "errors": result.errors, "images_per_s": result.requests_per_s * scenario.n,
                          "other_cpu_share": others / (result.seconds * cpu_count())}
                write(record)
                records.append(record)
                print(f"  round {round_ + 1}/{args.rounds} {scenario.name:8} {target.name:12} "
                      f"{result.requests_per_s:9.1f} req/s  p50 {result.p50_ms:7.2f} ms  "
                      f"errors {result.errors}  other processes {record['other_cpu_share']:.0%} CPU",
                      file=sys.stderr, flush=True)
    return records


def _median(records: list[dict[str, Any]], key: str) -> float:
    """The median of one field over records."""
    return statistics.median(r[key] for r in records)


def print_tables(records: list[dict[str, Any]], targets: list[Target], scenarios: list[Scenario]) -> None:
    """One table per scenario: medians over rounds, the req/s range, and the service's ratios."""
    print("\nothers: the largest share of the machine's CPU used by processes outside the benchmark "
          "during one of a row's runs (above a few %, another job disturbed it)")
    by = defaultdict(list)
    for r in records:
        by[r["scenario"], r["target"]].append(r)
    for scenario in scenarios:
        rounds = len(by[scenario.name, targets[0].name])
        print(f"\n{scenario.name}: {scenario.label}; median of {rounds} round{'s' * (rounds > 1)}")
        header = (f"{'target':12} {'req/s':>9} {'req/s range':>19} {'img/s':>9} {'p50 ms':>8} "
                  f"{'p99 ms':>8} {'p99/p50':>7} {'errors':>6} {'others':>6}")
        print(header + "\n" + "-" * len(header))
        rates, tails = {}, {}
        for target in targets:
            rows = by[scenario.name, target.name]
            rate, p50, p99 = (_median(rows, k) for k in ("requests_per_s", "p50_ms", "p99_ms"))
            rates[target.name], tails[target.name] = rate, p99 / p50 if p50 else math.nan
            each = [r["requests_per_s"] for r in rows]
            spread = f"{min(each):.1f}-{max(each):.1f}"
            images = f"{rate * scenario.n:9.1f}" if scenario.n else f"{'-':>9}"
            print(f"{target.name:12} {rate:9.1f} {spread:>19} {images} {p50:8.2f} {p99:8.2f} "
                  f"{tails[target.name]:7.2f} {sum(r['errors'] for r in rows):6d} "
                  f"{max(r['other_cpu_share'] for r in rows):6.0%}")
        ratios = []
        if rates.get("plain"):
            ratios.append(f"service/plain req/s {rates['service'] / rates['plain']:.2f}")
        v2 = {k: v for k, v in rates.items() if k.startswith("v2")}
        if v2 and max(v2.values()):
            best = max(v2, key=v2.__getitem__)
            ratios.append(f"service/best V2 ({best}) req/s {rates['service'] / v2[best]:.2f}")
        if scenario.concurrency == 8:
            ratios.append(f"service p99/p50 {tails['service']:.2f}")
        if ratios:
            print("; ".join(ratios))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--model", type=Path, required=True,
                        help="a version directory, e.g. models/mnist-dcgan/7")
    parser.add_argument("--repository", choices=("single", "shipped"), default="single",
                        help="the service serves only that version (default) or all of models/")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds per run (wrk: rounded up to whole seconds)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds per target and scenario")
    parser.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS),
                        help="comma-separated subset of %(default)s")
    parser.add_argument("--load", choices=tuple(LOADERS), default="wrk" if shutil.which("wrk") else "python",
                        help="load generator (default: wrk when installed)")
    parser.add_argument("--v2", metavar="URL", help="a V2 model endpoint, http://host:port/v2/models/NAME")
    parser.add_argument("--v2-pid", type=int, help="its server's PID, for memory")
    parser.add_argument("--v2-batching", metavar="URL", help="a second V2 endpoint (e.g. with batching)")
    parser.add_argument("--v2-batching-pid", type=int, help="its server's PID, for memory")
    parser.add_argument("--v2-label-shape", choices=("n1", "n"), default="n1",
                        help="shape of a conditional model's labels in V2 requests: [n, 1] (Triton) or [n]")
    parser.add_argument("--start-triton", type=Path, metavar="DIR",
                        help="a directory holding Triton's start.sh/stop.sh: start it without and with "
                             "dynamic batching as the two V2 peers")
    parser.add_argument("--json", type=Path, help="write every measurement to this file as JSON lines")
    args = parser.parse_args(argv)
    known = {s.name: s for s in SCENARIOS}
    unknown = set(args.scenarios.split(",")) - set(known)
    if unknown:
        parser.error(f"unknown scenarios {', '.join(sorted(unknown))}; known: {', '.join(known)}")
    args.scenario_list = [s for s in SCENARIOS if s.name in args.scenarios.split(",")]
    if args.start_triton and (args.v2 or args.v2_batching):
        parser.error("--start-triton starts both V2 peers: drop --v2 and --v2-batching")
    if args.load == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed: use --load python")
    if args.duration <= 0 or args.rounds < 1 or args.warmup < 0:
        parser.error("--duration must be positive, --rounds at least 1 and --warmup not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    """Start the targets, measure, print the tables, stop everything."""
    args = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on SIGTERM too
    try:
        return _run(args)
    except (BenchError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every target stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    """The benchmark proper: targets up, checks, load, tables, memory, cold starts; targets down."""
    spec = model_spec(args.model)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="peers-")))
        out = None
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            out = stack.enter_context(args.json.open("w"))

        def write(record: dict[str, Any]) -> None:
            if out:
                out.write(json.dumps(record) + "\n")
                out.flush()

        targets = start_local(stack, args, spec, tmp) + peers(stack, args, spec)
        bodies = {n: write_bodies(spec, n, args.v2_label_shape, tmp / f"bodies-n{n}.jsonl") for n in (1, 64)}
        duration = wrk_seconds(args.duration) if args.load == "wrk" else args.duration
        print(f"model {spec.name} v{spec.version} ({spec.path}); {cpu_count()} CPUs; load: {args.load}, "
              f"{duration:g} s per run, {args.rounds} round(s), warm-up {args.warmup:g} s")
        for t in targets:
            print(f"  {t.name:12} {t.base}  pid {t.pid or '?'}: {t.describe}")
        write({"kind": "run", "model": spec.name, "version": spec.version, "repository": args.repository,
               "cpus": cpu_count(), "loader": args.load, "duration_s": duration,
               "rounds": args.rounds,
               "targets": {t.name: {"url": t.base, "pid": t.pid, "describe": t.describe} for t in targets}})

        print("\noutputs of seeds 0-63 against the service's PNG grid:")
        for row in check_outputs(targets, spec, bodies):
            write(row)
            print(f"  {row['target']:12} {row['pixels_differing']} of {row['pixels']} pixels differ, "
                  f"by at most {row['max_abs_diff']}")

        records = measure(args, targets, bodies, args.scenario_list, write)
        print_tables(records, targets, args.scenario_list)

        print("\nmemory after the load (process and all its children, smaps_rollup):")
        for t in targets:
            if t.pid is None:
                print(f"  {t.name:12} no PID given")
                continue
            figures = memory(t.pid)
            write({"kind": "memory", "target": t.name, "pid": t.pid, **figures})
            print(f"  {t.name:12} PSS {figures['pss_mib']:7.1f} MiB  RSS {figures['rss_mib']:7.1f} MiB  "
                  f"({figures['processes']} processes)")

        print("\ncold start (spawn to the first 200: service /readyz, plain /hello; then the first image):")
        for t in targets:
            if not t.cold:
                continue
            write({"kind": "cold_start", "target": t.name, **t.cold})
            shown = ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v * 1000:.0f} ms"
                              for k, v in t.cold.items())
            note = " (ready: start.sh's own figure, polled every 100 ms)" if t.kind == "v2" else ""
            print(f"  {t.name:12} {shown}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
