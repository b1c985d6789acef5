"""Start a server (the service: gunicorn with serve/gunicorn.conf.py), wait until it is ready, stop it.

One start command, one readiness poll and one stop for the benchmarks and the tests:

    with start_service(env, log, port) as (process, ready_s):
        ...  # http://127.0.0.1:PORT answers; ready_s: seconds from spawn to the first 200

or, for a server whose lifetime is not one ``with`` block, ``spawn``, ``wait_ready`` and ``stop``.
Output goes to a log file, not a pipe: access logs would fill a pipe nobody reads and block the
server.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "serve/gunicorn.conf.py"
START_TIMEOUT = 120.0  # seconds for a server to answer: a bound, not an expectation
POLL_INTERVAL = 0.01
LOG_TAIL = 3000  # characters of a server's log that an error message quotes


class StartError(Exception):
    """A server exited before it answered 200, or did not answer 200 in time."""

    def __init__(self, reason: str, log: str) -> None:
        super().__init__(f"{reason}:\n{log}")
        self.reason = reason
        self.log = log


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_command(port: int, *options: str) -> list[str]:
    """The documented start command of the service, bound to ``127.0.0.1:port``, plus ``options``."""
    return [sys.executable, "-m", "gunicorn", "-c", CONFIG, "--bind", f"127.0.0.1:{port}", *options]


def without_gan(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (the process's environment by default) without its GAN_ variables."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if not k.startswith("GAN_")}


def log_text(log: Path, tail: int | None = LOG_TAIL) -> str:
    """A server's log (its last ``tail`` characters; all of it for None), for error messages."""
    if not log.exists():
        return ""
    text = log.read_text(errors="replace")
    return text if tail is None else text[-tail:]


def spawn(command: Sequence[str], env: Mapping[str, str], log: Path, *,
          new_session: bool = False) -> subprocess.Popen[bytes]:
    """Start ``command`` in the repository root, stdout and stderr to the file ``log``.

    ``new_session``: in a session of its own, so that a Ctrl-C meant for the caller does not
    reach it (the caller stops it).
    """
    with log.open("wb") as out:
        return subprocess.Popen(list(command), cwd=ROOT, env=dict(env), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=new_session)


def answers_200(url: str, timeout: float = 5.0) -> bool:
    """Whether one GET of ``url`` on a new connection answers 200 (False if it cannot connect)."""
    target = urlsplit(url)
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=timeout)
    path = (target.path or "/") + (f"?{target.query}" if target.query else "")
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, *, started: float | None = None,
               timeout: float = START_TIMEOUT, interval: float = POLL_INTERVAL,
               tail: int | None = LOG_TAIL) -> float:
    """Poll ``url`` every ``interval`` s until it answers 200; seconds since ``started``.

    ``started`` is a ``time.perf_counter()`` reading (default: now). Raises StartError, quoting
    ``tail`` characters of ``log``, if ``process`` exits first or ``timeout`` s pass.
    """
    started = time.perf_counter() if started is None else started
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise StartError(f"{process.args} exited with {process.returncode}", log_text(log, tail))
        if answers_200(url):
            return time.perf_counter() - started
        time.sleep(interval)
    raise StartError(f"{url} did not answer 200 within {timeout:g} s", log_text(log, tail))


def stop(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM ``process`` if it still runs, SIGKILL it after ``grace`` s; wait for it."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def start_service(env: Mapping[str, str], log: Path, port: int, *, command: Sequence[str] | None = None,
                  ready_path: str = "/readyz", timeout: float = START_TIMEOUT,
                  interval: float = POLL_INTERVAL, grace: float = 30.0, new_session: bool = True,
                  tail: int | None = LOG_TAIL) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """Spawn the service (or ``command``, a server on ``port``) and wait for ``ready_path``'s 200.

    Yields the process and its seconds from spawn to ready; stops it at exit (``stop``, ``grace``
    s). Raises StartError as ``wait_ready`` does, the process stopped.
    """
    started = time.perf_counter()
    process = spawn(service_command(port) if command is None else command, env, log,
                    new_session=new_session)
    try:
        ready_s = wait_ready(f"http://127.0.0.1:{port}{ready_path}", process, log, started=started,
                             timeout=timeout, interval=interval, tail=tail)
        yield process, ready_s
    finally:
        stop(process, grace)
