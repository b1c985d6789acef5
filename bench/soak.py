"""Soak benchmark: the service under a steady mixed load, its errors, latency and each worker's
memory over time, next to the plain Flask baseline under the same load in the same run.

Starts the service (gunicorn with serve/gunicorn.conf.py on the committed models/, as
bench/peers.py starts it with ``--repository shipped``) and the plain baseline
(bench/plain_server.py under gunicorn, as many sync workers, on one of those versions), then
for each in turn: a warm-up, then ``--duration`` seconds of ``--concurrency`` client threads,
each on one keep-alive connection (the plain app's sync workers close each one, so its clients
reconnect), sending a mix of requests, every one for new seeds:

- the service: ``GET /generate?model=M&seed=S&n=N`` (a PNG grid) and ``POST /generate``
  ``{"model": M, "seeds": [S, ..., S+N-1]}`` (JSON, base64 PNGs) in equal shares, on both
  shipped models in equal shares (their default versions);
- the plain app: ``GET /generate?seed=S&n=N`` on its one model (all it serves);
- for both, n=1 for 90% of the requests, n=16 for 8% and n=64 for 2%, drawn from one seeded
  generator per client, so client i asks both targets for the same sizes in the same order.

An error is any response other than 2xx or 304, a 200 whose body is not a PNG (GET) or JSON
(POST), and any connection error (the client reconnects). The warm-up first sends every kind
of request on a connection to each of the service's workers (its /healthz names the worker),
then runs the mix for ``--warmup`` seconds. Each worker's PSS, RSS and anonymous memory (heap
and other pages not backed by a file; all from /proc/PID/smaps_rollup) are sampled after the
warm-up, every ``--sample-every`` seconds and at the end; a worker that exits or is replaced
during the soak is reported. The exit status is 1 if the service had an error (warm-up
included), a worker was replaced, or a worker's RSS or anonymous memory grew by
``--max-growth`` percent (default 5) or more; else 0 (2: the benchmark could not run). PSS is
shown but does not decide: it splits shared pages among every process mapping them, other
jobs' included, so it moves when they start or stop. The baseline's figures are for
comparison only.

    python bench/soak.py                                   # 60 s at 32 connections per target
    python bench/soak.py --duration 600 --out out/soak.jsonl

GAN_ variables set in the environment reach the service (GAN_MODELS_DIR excepted), as in
bench/peers.py; the access log is off unless GAN_ACCESS_LOG says otherwise.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import math
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/peers.py, run from anywhere

import peers  # noqa: E402

from serve.config import ConfigError, cpu_count  # noqa: E402
from serve.repository import scan  # noqa: E402

ROOT = peers.ROOT
MODELS = ROOT / "models"
SIZES = ((1, 0.90), (16, 0.08), (64, 0.02))  # images per request, share of requests
SEED_STRIDE = 64  # seeds per request slot: no two requests share a seed
TIMEOUT = 30.0  # seconds a request may take before it counts as a connection error
MEASURES = {"pss": "PSS", "rss": "RSS", "anon": "anon"}  # key: how tables name it
# PSS splits each shared page among every process that maps it, the other jobs on the host
# included, so it moves when they start or exit (and so would private-page counts: a library
# page becomes private when its other users exit). RSS and anonymous memory move only with
# the worker's own pages; a leak grows both.
GATED = ("rss", "anon")


@dataclass
class Load:
    """What the clients saw during one phase: latencies by request kind, and the errors."""

    seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        """Requests answered without error."""
        return sum(len(v) for v in self.latencies.values())

    @property
    def error_count(self) -> int:
        """Requests that failed, in any way."""
        return sum(self.errors.values())

    def figures(self, kinds: list[str] | None = None) -> dict[str, float]:
        """Requests, errors, req/s and latency percentiles (ms) over ``kinds`` (default: all)."""
        chosen = [self.latencies[k] for k in (kinds or list(self.latencies))]
        values = np.concatenate([np.asarray(v) for v in chosen]) if chosen else np.array([])
        p50, p99 = (np.percentile(values, [50, 99]) * 1000) if values.size else (math.nan, math.nan)
        rate = values.size / self.seconds if self.seconds else 0.0
        return {"requests": int(values.size), "requests_per_s": rate,
                "p50_ms": float(p50), "p99_ms": float(p99)}


@dataclass(frozen=True)
class Mix:
    """The requests one target gets: which models, and whether it takes POST."""

    models: tuple[str, ...]  # empty: the target serves one model and takes no model parameter
    post: bool

    def request(self, rng: random.Random, seed: int) -> tuple[str, str, str, bytes | None]:
        """Kind, method, path and body of one request for seeds ``seed``, ``seed + 1``, ..."""
        n = rng.choices([s for s, _ in SIZES], weights=[w for _, w in SIZES])[0]
        pick, post = rng.random(), rng.random()  # drawn for every target: the same sizes in turn
        model = self.models[int(pick * len(self.models))] if self.models else None
        method = "POST" if self.post and post < 0.5 else "GET"
        return (f"{method} n={n}", method, *self.path_and_body(method, model, seed, n))

    @staticmethod
    def path_and_body(method: str, model: str | None, seed: int, n: int) -> tuple[str, bytes | None]:
        """The path and body of a request for the n seeds from ``seed``."""
        if method == "POST":
            return "/generate", json.dumps({"model": model, "seeds": list(range(seed, seed + n))}).encode()
        query = f"model={model}&" if model else ""
        return f"/generate?{query}seed={seed}&n={n}", None


def drive(base: str, mix: Mix, concurrency: int, seconds: float, first_seed: int, rng_seed: int) -> Load:
    """``concurrency`` client threads for ``seconds``, each on a keep-alive connection."""
    target = urlsplit(base)
    slots = itertools.count()
    lock = threading.Lock()
    load = Load()
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        rng = random.Random(rng_seed * 1_000_003 + index)
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=TIMEOUT)
        while time.monotonic() < stop_at:
            with lock:
                slot = next(slots)
            kind, method, path, body = mix.request(rng, first_seed + slot * SEED_STRIDE)
            headers = {"Content-Type": "application/json"} if body else {}
            started = time.perf_counter()
            try:
                connection.request(method, path, body, headers)
                response = connection.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as e:
                connection.close()  # the next request reconnects
                with lock:
                    load.errors[type(e).__name__] += 1
                continue
            elapsed = time.perf_counter() - started
            error = None
            if response.status == 200:
                if not data.startswith(b"{" if method == "POST" else b"\x89PNG"):
                    error = "bad body"
            elif not (200 <= response.status < 300 or response.status == 304):
                error = f"HTTP {response.status}"
            with lock:
                if error:
                    load.errors[error] += 1
                else:
                    load.latencies[kind].append(elapsed)
        connection.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    load.seconds = time.perf_counter() - started
    return load


def warm_each_worker(base: str, mix: Mix, master: int, first_seed: int) -> Load:
    """Every kind of request of ``mix`` on every worker, so that what a worker sets up on first
    use (sessions' buffers, batch-size checks, encoders) is done before the first memory sample.

    A keep-alive connection stays with the worker that accepted it, and the service's /healthz
    names that worker: connections are opened until each worker has one (or a bound is hit).
    """
    target = urlsplit(base)
    expected, seen = set(workers(master)), set()
    load = Load()
    held = []
    slot = itertools.count()
    for _ in range(50 * max(1, len(expected))):
        if seen >= expected:
            break
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=TIMEOUT)
        held.append(connection)  # kept open, so the next connection may go to another worker
        try:
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            worker = json.loads(response.read())["pid"]
            if worker in seen:
                continue
            seen.add(worker)
            for model in mix.models or (None,):
                for method in ("GET", "POST") if mix.post else ("GET",):
                    for n, _ in SIZES:
                        seed = first_seed + next(slot) * SEED_STRIDE
                        path, body = mix.path_and_body(method, model, seed, n)
                        started = time.perf_counter()
                        connection.request(method, path, body,
                                           {"Content-Type": "application/json"} if body else {})
                        response = connection.getresponse()
                        response.read()
                        if response.status == 200:
                            load.latencies[f"{method} n={n}"].append(time.perf_counter() - started)
                        else:
                            load.errors[f"HTTP {response.status}"] += 1
        except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
            load.errors[type(e).__name__] += 1
    for connection in held:
        connection.close()
    if not seen >= expected:
        print(f"  warm-up: reached workers {sorted(seen)} of {sorted(expected)}", file=sys.stderr)
    return load


# --- memory -----------------------------------------------------------------------------------

def workers(master: int) -> list[int]:
    """The gunicorn master's worker processes (its descendants)."""
    return sorted(pid for pid in peers.process_tree(master) if pid != master)


def process_memory(pid: int) -> dict[str, float] | None:
    """One process's PSS, RSS and anonymous memory (its heap and other non-file pages) in MiB
    from smaps_rollup, or None once it has exited."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    keys = ("Pss", "Rss", "Anonymous")
    found = {key: re.search(rf"^{key}:\s+(\d+) kB", rollup, re.MULTILINE) for key in keys}
    if not all(found.values()):
        return None
    kib = {key: int(match[1]) for key, match in found.items() if match}
    return {"pss_mib": kib["Pss"] / 1024, "rss_mib": kib["Rss"] / 1024, "anon_mib": kib["Anonymous"] / 1024}


class Sampler:
    """Samples each worker's memory now and every ``every`` seconds until stopped."""

    def __init__(self, name: str, master: int, every: float, write: Any):
        self.name, self.master, self.every, self.write = name, master, every, write
        self.samples: dict[int, list[dict[str, float]]] = defaultdict(list)
        self.started = time.monotonic()
        self.pids = workers(master)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self, phase: str) -> None:
        """One sample of every worker there was at the start, and of any new one."""
        for pid in sorted(set(self.pids) | set(workers(self.master))):
            figures = process_memory(pid)
            if figures is None:
                continue
            record = {"t_s": round(time.monotonic() - self.started, 3), "phase": phase, **figures}
            self.samples[pid].append(record)
            self.write({"kind": "memory", "target": self.name, "pid": pid, **record})

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample("during")

    def __enter__(self) -> Sampler:
        self.sample("start")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample("end")

    def growth(self) -> list[dict[str, Any]]:
        """Each worker's first and last sample, largest PSS, growth in %; replaced workers flagged."""
        rows = []
        for pid, samples in sorted(self.samples.items()):
            first, last = samples[0], samples[-1]
            rows.append({
                "kind": "growth", "target": self.name, "pid": pid,
                "replaced": first["phase"] != "start" or last["phase"] != "end",
                **{f"{key}_{end}_mib": sample[f"{key}_mib"] for key in MEASURES
                   for end, sample in (("start", first), ("end", last))},
                **{f"{key}_max_mib": max(s[f"{key}_mib"] for s in samples) for key in MEASURES},
                **{f"{key}_growth_pct": percent(first[f"{key}_mib"], last[f"{key}_mib"]) for key in MEASURES},
                "samples": len(samples),
            })
        return rows


def percent(start: float, end: float) -> float:
    """Growth from start to end in percent."""
    return (end - start) / start * 100 if start else math.inf


# --- verdict and tables -----------------------------------------------------------------------

def verdict(errors: int, growth: list[dict[str, Any]], max_growth: float) -> list[str]:
    """Why the service failed the soak (empty: it passed)."""
    reasons = []
    if errors:
        reasons.append(f"{errors} error{'s' * (errors > 1)}")
    for row in growth:
        if row["replaced"]:
            reasons.append(f"worker {row['pid']} exited or was replaced during the soak")
            continue
        for key in GATED:
            if row[f"{key}_growth_pct"] >= max_growth:
                reasons.append(f"worker {row['pid']} {MEASURES[key]} grew {row[f'{key}_growth_pct']:+.1f}% "
                               f"(limit {max_growth:g}%)")
    return reasons


def print_load_table(results: dict[str, dict[str, Any]]) -> None:
    """Requests, errors, req/s, p50, p99 and the others' CPU share per target, then by kind."""
    header = (f"{'target':8} {'kind':12} {'requests':>9} {'errors':>6} {'req/s':>8} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'others':>6}")
    print(header + "\n" + "-" * len(header))
    for name, r in results.items():
        load: Load = r["load"]
        kinds = sorted(load.latencies, key=kind_order)
        rows = [("all", load.figures())] + [(k, load.figures([k])) for k in kinds]
        for kind, f in rows:
            errors = f"{load.error_count:6d}" if kind == "all" else f"{'':6}"
            others = f"{r['other_cpu_share']:6.0%}" if kind == "all" else ""
            print(f"{name if kind == 'all' else '':8} {kind:12} {f['requests']:9d} {errors} "
                  f"{f['requests_per_s']:8.1f} {f['p50_ms']:8.2f} {f['p99_ms']:8.2f} {others}")
        if load.errors:
            print(f"{'':8} errors: " + ", ".join(f"{k} x{v}" for k, v in load.errors.most_common()))


def kind_order(kind: str) -> tuple[str, int]:
    """GET before POST, then by n."""
    method, n = kind.split(" n=")
    return method, int(n)


def print_memory_table(growth: dict[str, list[dict[str, Any]]]) -> None:
    """Each worker's memory at the start and the end of the soak, and its growth."""
    header = f"{'target':8} {'worker':>8}" + "".join(
        f" {MEASURES[key] + ' start':>10} {'end':>7} {'growth':>7}" for key in MEASURES) + f" {'RSS max':>8}"
    print(header + "  (MiB)\n" + "-" * len(header))
    for name, rows in growth.items():
        for row in rows:
            cells = "".join(f" {row[f'{key}_start_mib']:10.1f} {row[f'{key}_end_mib']:7.1f} "
                            f"{row[f'{key}_growth_pct']:+6.1f}%" for key in MEASURES)
            note = "  (exited or replaced)" if row["replaced"] else ""
            print(f"{name:8} {row['pid']:8d}{cells} {row['rss_max_mib']:8.1f}{note}")


# --- the run ----------------------------------------------------------------------------------

def default_plain_model() -> Path:
    """The highest shipped version of mnist-dcgan (else of the first model by name)."""
    found = scan(MODELS)
    if not found:
        raise peers.BenchError(f"no models in {MODELS}")
    name = "mnist-dcgan" if "mnist-dcgan" in found else sorted(found)[0]
    return found[name][max(found[name])]


def soak(name: str, base: str, pid: int, mix: Mix, args: argparse.Namespace,
         first_seed: int, write: Any) -> dict[str, Any]:
    """Warm-up, then the soak with memory samples, on one target; its figures."""
    warm = Load()
    if name == "service":  # the plain app has no route that names its worker
        warm = warm_each_worker(base, mix, pid, first_seed + 10**13)
    if args.warmup:
        timed = drive(base, mix, args.concurrency, args.warmup, first_seed, args.seed + 1)
        warm.errors.update(timed.errors)
        for kind, values in timed.latencies.items():
            warm.latencies[kind] += values
    print(f"  {name}: warm-up {args.warmup:g} s, {warm.requests} requests, {warm.error_count} errors; "
          f"soaking {args.duration:g} s at {args.concurrency} connections", file=sys.stderr, flush=True)
    roots = [pid, os.getpid()]  # the target and the clients: the CPU that is not the others'
    machine, ours = peers.cpu_seconds(roots)
    with Sampler(name, pid, args.sample_every, write) as sampler:
        load = drive(base, mix, args.concurrency, args.duration, first_seed + 10**12, args.seed)
    machine_after, ours_after = peers.cpu_seconds(roots)
    others = max(0.0, machine_after - machine - (ours_after - ours)) / (load.seconds * cpu_count())
    figures = load.figures()
    write({"kind": "load", "target": name, "phase": "soak", "seconds": load.seconds, **figures,
           "errors": load.error_count, "errors_by": dict(load.errors), "warmup_requests": warm.requests,
           "warmup_errors": warm.error_count, "warmup_errors_by": dict(warm.errors),
           "other_cpu_share": others,
           "by_kind": {k: load.figures([k]) for k in sorted(load.latencies, key=kind_order)}})
    growth = sampler.growth()
    for row in growth:
        write(row)
    return {"load": load, "warm": warm, "growth": growth, "other_cpu_share": others}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of soak per target")
    parser.add_argument("--concurrency", type=int, default=32, help="client connections")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds of the same load before the first memory sample")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument("--max-growth", type=float, default=5.0,
                        help="a service worker's RSS or anonymous memory growing by this many percent "
                             "fails the soak")
    parser.add_argument("--plain-model", type=Path,
                        help="the version the plain baseline serves (default: the highest mnist-dcgan)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the request mix")
    parser.add_argument("--out", type=Path, help="write every measurement to this file as JSON lines")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.concurrency < 1 or args.warmup < 0 or args.sample_every <= 0:
        parser.error("--duration and --sample-every must be positive, --concurrency at least 1, "
                     "--warmup not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    """Start both targets, soak each in turn, print the tables; 1 if the service failed the soak."""
    args = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the targets on SIGTERM too
    try:
        with ExitStack() as stack:
            out: TextIO | None = None
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                out = stack.enter_context(args.out.open("w"))
            return _run(args, stack, out)
    except (peers.BenchError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: every target stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace, stack: ExitStack, out: TextIO | None) -> int:
    """The benchmark proper: targets up, soak each, tables, verdict; targets down."""
    def write(record: dict[str, Any]) -> None:
        if out:
            out.write(json.dumps(record) + "\n")
            out.flush()

    spec = peers.model_spec(args.plain_model or default_plain_model())
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
    service, plain = peers.start_local(stack, argparse.Namespace(repository="shipped"), spec, tmp)
    models = tuple(sorted(scan(MODELS)))
    mixes = {"service": Mix(models, post=True), "plain": Mix((), post=False)}
    sizes = ", ".join(f"n={n} {share:.0%}" for n, share in SIZES)
    print(f"soak: {args.duration:g} s at {args.concurrency} keep-alive connections per target after "
          f"{args.warmup:g} s of warm-up; {cpu_count()} CPUs; memory sampled every {args.sample_every:g} s")
    print(f"  service {service.base} pid {service.pid}: {service.describe}; GET and POST /generate "
          f"on {', '.join(models)}; {sizes}")
    print(f"  plain   {plain.base} pid {plain.pid}: {plain.describe}; GET /generate on "
          f"{spec.name} v{spec.version}; {sizes}")
    write({"kind": "run", "duration_s": args.duration, "concurrency": args.concurrency,
           "warmup_s": args.warmup, "sample_every_s": args.sample_every, "max_growth_pct": args.max_growth,
           "cpus": cpu_count(), "sizes": dict(SIZES), "seed": args.seed,
           "targets": {"service": {"url": service.base, "pid": service.pid, "describe": service.describe,
                                   "models": list(models), "methods": ["GET", "POST"]},
                       "plain": {"url": plain.base, "pid": plain.pid, "describe": plain.describe,
                                 "models": [f"{spec.name}/{spec.version}"], "methods": ["GET"]}}})

    results = {}
    for index, target in enumerate((service, plain)):
        if target.pid is None:
            raise peers.BenchError(f"{target.name}: no PID to sample the memory of")
        results[target.name] = soak(target.name, target.base, target.pid, mixes[target.name], args,
                                    index * 10**15, write)

    print(f"\nload: {args.duration:g} s, {args.concurrency} connections (others: the CPU share of "
          "processes outside the benchmark; above a few %, another job disturbed the run)")
    print_load_table({name: r for name, r in results.items()})
    s, p = results["service"]["load"].figures(), results["plain"]["load"].figures()
    if p["requests_per_s"] and p["p99_ms"]:
        print(f"service / plain: req/s {s['requests_per_s'] / p['requests_per_s']:.2f}, "
              f"p50 {s['p50_ms'] / p['p50_ms']:.2f}, p99 {s['p99_ms'] / p['p99_ms']:.2f}")
    print(f"\nmemory per worker, after the warm-up (start) and at the end of the soak "
          f"(sampled every {args.sample_every:g} s):")
    print_memory_table({name: r["growth"] for name, r in results.items()})

    service_result = results["service"]
    errors = service_result["load"].error_count + service_result["warm"].error_count
    reasons = verdict(errors, service_result["growth"], args.max_growth)
    largest = max((r[f"{key}_growth_pct"] for r in service_result["growth"] for key in GATED),
                  default=math.nan)
    write({"kind": "result", "ok": not reasons, "reasons": reasons, "service_errors": errors,
           "largest_growth_pct": largest})
    if reasons:
        print(f"\nFAILED: {'; '.join(reasons)}")
        return 1
    print(f"\nok: the service had no errors and no worker's RSS or anonymous memory grew by "
          f"{args.max_growth:g}% or more (largest {largest:+.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
