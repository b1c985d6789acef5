"""Service configuration: every setting comes from a ``GAN_`` environment variable."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PREFIX = "GAN_"
VARIABLES = (
    "GAN_MODELS_DIR",
    "GAN_BIND",
    "GAN_WORKERS",
    "GAN_THREADS",
    "GAN_MAX_SAMPLES",
    "GAN_MAX_BODY_BYTES",
    "GAN_TIMEOUT",
    "GAN_GRACEFUL_TIMEOUT",
    "GAN_RELOAD_INTERVAL",
    "GAN_LOG_LEVEL",
    "GAN_DEFAULT_MODEL",
)
# Set by the gunicorn config in workers forked to replace others (crash, timeout, HUP): they
# skip bad versions like a reload does instead of failing to boot, which would stop gunicorn.
REPLACEMENT_WORKER_ENV = "SERVE_REPLACEMENT_WORKER"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
MODEL_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")
_INT_RE = re.compile(r"[0-9]+\Z")

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """A setting is malformed or inconsistent."""


@dataclass(frozen=True)
class Settings:
    """The validated settings of one service instance."""

    models_dir: Path
    bind: str
    workers: int
    threads: int
    max_samples: int
    max_body_bytes: int
    timeout: int
    graceful_timeout: int
    reload_interval: int
    log_level: str
    default_model: str | None
    cpus: int


def default_models_dir() -> Path:
    """The ``models`` directory next to the ``serve`` package."""
    return Path(__file__).resolve().parent.parent / "models"


def cpu_count() -> int:
    """CPUs this process may run on (respects taskset and cpusets, unlike os.cpu_count)."""
    return len(os.sched_getaffinity(0))


def check_cpu_budget(workers: int, threads: int, cpus: int) -> None:
    """Refuse more onnxruntime threads in total than CPUs: oversubscription only adds latency."""
    if workers * threads > cpus:
        raise ConfigError(
            f"workers x threads = {workers} x {threads} = {workers * threads} exceeds the "
            f"{cpus} CPUs available; lower GAN_WORKERS or GAN_THREADS"
        )


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Parse and check the ``GAN_`` variables of ``env`` (default: the process environment)."""
    env = os.environ if env is None else env
    for name in sorted(set(env) - set(VARIABLES)):
        if name.startswith(PREFIX):
            log.warning("ignoring unknown variable %s (known: %s)", name, ", ".join(VARIABLES))

    def integer(name: str, default: int, minimum: int) -> int:
        raw = env.get(name)
        if raw is None:
            return default
        if not _INT_RE.match(raw.strip()) or int(raw) < minimum:
            raise ConfigError(f"{name} must be an integer >= {minimum}, got {raw!r}")
        return int(raw)

    def text(name: str, default: str) -> str:
        raw = env.get(name, default).strip()
        if not raw:
            raise ConfigError(f"{name} must not be empty")
        return raw

    cpus = cpu_count()
    threads = integer("GAN_THREADS", 1, 1)
    if threads > cpus:
        raise ConfigError(f"GAN_THREADS={threads} exceeds the {cpus} CPUs available")
    workers = integer("GAN_WORKERS", max(1, cpus // threads), 1)
    check_cpu_budget(workers, threads, cpus)

    log_level = text("GAN_LOG_LEVEL", "info").lower()
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"GAN_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    default_model = env.get("GAN_DEFAULT_MODEL")
    if default_model is not None and not MODEL_NAME_RE.match(default_model):
        raise ConfigError(f"GAN_DEFAULT_MODEL is not a valid model name: {default_model!r}")

    return Settings(
        models_dir=Path(text("GAN_MODELS_DIR", str(default_models_dir()))),
        bind=text("GAN_BIND", "127.0.0.1:8000"),
        workers=workers,
        threads=threads,
        max_samples=integer("GAN_MAX_SAMPLES", 64, 1),
        max_body_bytes=integer("GAN_MAX_BODY_BYTES", 1024 * 1024, 1),
        timeout=integer("GAN_TIMEOUT", 30, 1),
        graceful_timeout=integer("GAN_GRACEFUL_TIMEOUT", 30, 0),
        reload_interval=integer("GAN_RELOAD_INTERVAL", 5, 0),
        log_level=log_level,
        default_model=default_model,
        cpus=cpus,
    )
