"""Load benchmark of the service on loopback; prints one table of comparable figures.

Starts gunicorn with serve/gunicorn.conf.py on a free 127.0.0.1 port and drives it with client
threads (one new connection per request, as gunicorn's sync workers close each one), for a
bounded time and request count per scenario:

- ``GET /healthz``: the HTTP ceiling of the same gunicorn and Flask setup;
- ``GET /generate?seed=..&n=1`` and ``n=64``: PNG grids, one new seed per request;

and measures onnxruntime in-process on the same number of processes and threads: batch 1 as
the service runs it, batched (what batch 1 costs), and the whole in-process pipeline (noise,
inference, uint8, grid, PNG). The client shares the CPUs with the server, as on one host.

    python bench/serve_load.py --models-dir models --duration 10
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import multiprocessing
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from service import StartError, free_port, service_command, start_service, without_gan  # noqa: E402

from serve import imaging, latent  # noqa: E402
from serve.config import cpu_count  # noqa: E402
from serve.model import OnnxGenerator, load_onnx_generator  # noqa: E402
from serve.repository import ModelVersion, RepositoryError, validate_repository  # noqa: E402


@dataclass
class Row:
    """One scenario's figures."""

    name: str
    images_per_call: int
    calls: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile in milliseconds (nan without samples)."""
        if not self.latencies:
            return float("nan")
        return float(np.percentile(self.latencies, q) * 1000)


@contextmanager
def start_server(args: argparse.Namespace, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """gunicorn as documented, bound to loopback (bench/service.py); yields once /readyz answers."""
    env = without_gan() | {
        "GAN_MODELS_DIR": str(args.models_dir),
        "GAN_WORKERS": str(args.workers),
        "GAN_THREADS": str(args.threads),
        "GAN_LOG_LEVEL": "warning",
        "GAN_RELOAD_INTERVAL": "0",
    }
    command = service_command(port, "--access-logfile", "/dev/null")
    try:
        with start_service(env, log, port, command=command, timeout=60, grace=60, new_session=False,
                           tail=None) as (process, _):
            yield process
    except StartError as e:
        sys.exit(str(e))


def get(port: int, path: str) -> tuple[int, bytes]:
    """One GET on a new connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def load(port: int, row: Row, path_for: Callable[[int], str], args: argparse.Namespace) -> Row:
    """Drive the server with ``args.concurrency`` threads until the time or count bound."""
    counter = itertools.count()
    lock = threading.Lock()
    for i in range(args.concurrency):  # warm up: connections, first-request paths
        get(port, path_for(10**9 + i))
    stop_at = time.monotonic() + args.duration

    def client() -> None:
        while time.monotonic() < stop_at:
            i = next(counter)
            if i >= args.max_requests:
                return
            started = time.perf_counter()
            status, _ = get(port, path_for(i))
            elapsed = time.perf_counter() - started
            with lock:
                row.calls += 1
                row.latencies.append(elapsed)
                row.errors += status != 200

    threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    row.seconds = time.perf_counter() - started
    return row


def _raw_worker(job: dict) -> tuple[int, float, list[float]]:
    """In one process: run a mode on batches of n for a while; calls, seconds, latencies."""
    from serve.repository import read_spec

    spec = read_spec(Path(job["path"]), job["name"], job["version"])
    run = _raw_call(job["mode"], load_onnx_generator(spec, job["threads"]), job["n"])
    run(0)  # warm up
    latencies: list[float] = []
    started = time.perf_counter()
    for i in range(job["max_calls"]):
        t = time.perf_counter()
        run(i + 1)
        latencies.append(time.perf_counter() - t)
        if t - started > job["duration"]:
            break
    return len(latencies), time.perf_counter() - started, latencies


def _raw_call(mode: str, generator: OnnxGenerator, n: int) -> Callable[[int], object]:
    spec = generator.spec
    labels = np.zeros(n, dtype=np.int64) if spec.conditional else None
    if mode == "batched":
        feeds = {"z": latent.noise_for_seeds(range(n), spec.latent_size)}
        if labels is not None:
            feeds["labels"] = labels
        return lambda i: generator.session.run(["images"], feeds)
    if mode == "batch-1":
        z = latent.noise_for_seeds(range(n), spec.latent_size)
        return lambda i: generator.generate(z, labels)

    def pipeline(i: int) -> bytes:
        z = latent.noise_for_seeds(range(i * n, i * n + n), spec.latent_size)
        return imaging.png_bytes(imaging.grid(imaging.to_uint8(generator.generate(z, labels))))

    return pipeline


def raw(spec: ModelVersion, mode: str, n: int, args: argparse.Namespace) -> Row:
    """``mode`` in ``args.workers`` parallel processes of ``args.threads`` threads each."""
    job = {"mode": mode, "path": str(spec.path), "name": spec.name, "version": spec.version,
           "threads": args.threads, "n": n, "duration": args.duration,
           "max_calls": args.max_requests}
    # spawn: fresh processes, like gunicorn workers that create their sessions after fork
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        results = pool.map(_raw_worker, [job] * args.workers)
    row = Row(f"in-process {mode}, n={n}", n)
    for calls, seconds, latencies in results:
        row.calls += calls
        row.latencies += latencies
        row.seconds = max(row.seconds, seconds)
    return row


def batch_drift(spec: ModelVersion, threads: int) -> str:
    """How batched inference differs from batch 1 on 64 seeds: why the service runs batch 1."""
    generator = load_onnx_generator(spec, threads)
    z = latent.noise_for_seeds(range(64), spec.latent_size)
    labels = latent.labels_for_seeds(range(64), len(spec.classes or ())) if spec.conditional else None
    single = generator.generate(z, labels)
    feeds = {"z": z} | ({} if labels is None else {"labels": labels})
    batched = generator.session.run(["images"], feeds)[0]
    pixels = int((imaging.to_uint8(single) != imaging.to_uint8(batched)).sum())
    return (f"batched vs batch-1 on 64 seeds: max |diff| {float(np.abs(single - batched).max()):.3g}, "
            f"{pixels} uint8 pixels differ")


def pick_spec(args: argparse.Namespace) -> ModelVersion:
    try:
        specs = validate_repository(args.models_dir)
    except RepositoryError as e:
        sys.exit(f"{e}\n(train and export a model, or pass --models-dir)")
    names = sorted({s.name for s in specs})
    name = args.model or names[0]
    chosen = [s for s in specs if s.name == name]
    if not chosen:
        sys.exit(f"no model {name!r} in {args.models_dir} (it holds {', '.join(names)})")
    return max(chosen, key=lambda s: s.version)


def print_table(rows: list[Row], ceiling: Row, batch1: dict[int, Row]) -> None:
    """The figures, and for each HTTP scenario its ratio to the ceiling and to in-process."""
    header = (f"{'scenario':34} {'calls':>7} {'calls/s':>9} {'images/s':>9} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'err':>4}  ratios")
    print(header)
    print("-" * len(header))
    for row in rows:
        images = row.rate * row.images_per_call
        ratios = ""
        if row.name.startswith("GET /generate"):
            inside = batch1[row.images_per_call]
            ratios = (f"calls/s {row.rate / ceiling.rate:.2f} x ceiling; images/s "
                      f"{images / (inside.rate * inside.images_per_call):.2f} x in-process batch-1")
        shown = f"{images:9.0f}" if row.images_per_call else f"{'-':>9}"
        print(f"{row.name:34} {row.calls:7d} {row.rate:9.1f} {shown} {row.percentile(50):8.2f} "
              f"{row.percentile(99):8.2f} {row.errors:4d}  {ratios}")


def main() -> None:
    """Run every scenario once and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--model", help="model name (default: the first by name)")
    parser.add_argument("--workers", type=int, default=cpu_count())
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads per worker")
    parser.add_argument("--concurrency", type=int, help="client threads (default: 2 x workers)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument("--max-requests", type=int, default=20000, help="bound per scenario")
    args = parser.parse_args()
    args.concurrency = args.concurrency or 2 * args.workers

    spec = pick_spec(args)
    print(f"model {spec.name} v{spec.version}: latent {spec.latent_size}, images {spec.image_shape}; "
          f"{args.workers} workers x {args.threads} threads on {cpu_count()} CPUs; "
          f"{args.concurrency} client threads; {args.duration:g} s per scenario")
    print(batch_drift(spec, args.threads))

    query = f"&model={spec.name}" + ("&labels=0" if spec.conditional else "")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        with start_server(args, port, Path(tmp) / "gunicorn.log"):
            ceiling = load(port, Row("GET /healthz (HTTP ceiling)", 0), lambda i: "/healthz", args)
            rows.append(ceiling)
            for n in (1, 64):
                row = Row(f"GET /generate n={n} (PNG grid)", n)
                rows.append(load(port, row, lambda i, n=n: f"/generate?seed={i * n}&n={n}{query}", args))
    batch1 = {n: raw(spec, "batch-1", n, args) for n in (1, 64)}
    others = [raw(spec, "batched", 64, args)] + [raw(spec, "pipeline", n, args) for n in (1, 64)]
    print_table(rows + list(batch1.values()) + others, ceiling, batch1)


if __name__ == "__main__":
    main()
