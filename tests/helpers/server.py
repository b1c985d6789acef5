"""Real gunicorn servers for the tests, started and polled by bench/service.py as in the benchmarks."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from service import (  # noqa: E402
    StartError,
    free_port,
    service_command,
    spawn,
    stop,
    wait_ready,
    without_gan,
)

START_TIMEOUT = 60.0  # seconds for gunicorn to become ready: a bound, not an expectation
POLL_INTERVAL = 0.1  # seconds between readiness polls, not an assertion
STOP_GRACE = 30.0  # seconds a stopping server gets before SIGKILL

# Requests (each on a new connection) to send before concluding that one worker takes every
# connection: gunicorn's workers race for each accept, and on a busy host one can win many
# in a row.
SPREAD_ATTEMPTS = 400


def gunicorn_env(**settings: str) -> dict[str, str]:
    """The test process's environment without GAN_ variables, plus ``settings``."""
    return without_gan() | settings


@dataclass
class Server:
    """A running gunicorn, its base URL and the file its output goes to."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def stop(self) -> str:
        """Stop gracefully (if still running) and return everything it logged."""
        stop(self.process, STOP_GRACE)
        return self.log_path.read_text(errors="replace")


def start_gunicorn(log_dir: Path, **settings: str) -> Server:
    """Start gunicorn with GAN_ ``settings`` and wait until /readyz answers 200.

    Raises RuntimeError with the whole log if it exits first or is not ready in START_TIMEOUT s.
    """
    port = free_port()
    log_path = log_dir / f"gunicorn-{port}.log"
    process = spawn(service_command(port), gunicorn_env(**settings), log_path)
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_ready(f"{server.url}/readyz", process, log_path, timeout=START_TIMEOUT,
                   interval=POLL_INTERVAL)
    except StartError as e:
        raise RuntimeError(f"{e.reason}:\n{server.stop()}") from None
    return server


def assert_start_refused(fragment: str, **settings: str) -> subprocess.CompletedProcess[str]:
    """Run gunicorn with GAN_ ``settings``: it must stop by itself, non-zero, saying ``fragment``.

    Returns the run (its output, stdout and stderr together, in ``stdout``) for further checks.
    A gunicorn that starts instead runs until START_TIMEOUT, and the test fails.
    """
    result = subprocess.run(
        service_command(free_port()),
        cwd=ROOT,
        env=gunicorn_env(**settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert result.returncode != 0, f"gunicorn exited with 0:\n{result.stdout}"
    assert fragment in result.stdout, f"{fragment!r} not in gunicorn's output:\n{result.stdout}"
    return result
