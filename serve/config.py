"""Service configuration: every setting comes from a ``GAN_`` environment variable."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from serve.auth import DEFAULT_EXEMPT, load_token_file, parse_exempt, tokens_from_variable
from serve.ratelimit import RateLimit, parse_proxy_hops, parse_rate_limit
from serve.repository import MODEL_NAME_RE

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
    "GAN_VERSION_POLICY",
    "GAN_VERSION_CACHE",
    "GAN_ACCESS_LOG",
    "GAN_BATCHING",
    "GAN_KEEPALIVE",
    "GAN_CLIENT_TIMEOUT",
    "GAN_METRICS_DIR",
    "GAN_LOG_FORMAT",
    "GAN_SHOW_PATHS",
    "GAN_API_TOKEN",
    "GAN_API_TOKEN_FILE",
    "GAN_AUTH_EXEMPT",
    "GAN_RATE_LIMIT",
    "GAN_TRUSTED_PROXY_HOPS",
    "GAN_PROVIDERS",
)
# Set by the gunicorn config in workers forked to replace others (crash, timeout, HUP): they
# skip bad versions like a reload does instead of failing to boot, which would stop gunicorn.
REPLACEMENT_WORKER_ENV = "SERVE_REPLACEMENT_WORKER"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("json", "text")
SWITCHES = {"on": True, "off": False}
_INT_RE = re.compile(r"[0-9]+\Z")
# Short names for onnxruntime's execution providers; a full name (``...ExecutionProvider``)
# is taken as it is.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
}
_PROVIDER_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*ExecutionProvider\Z")

log = logging.getLogger(__name__)


class ConfigError(Exception):
    """A setting is malformed or inconsistent."""


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of each model a worker keeps loaded (GAN_VERSION_POLICY), as Triton's.

    ``latest:N``: the N highest versions; ``all``: every version; ``specific:V1,V2,...``:
    those versions, where a model has them.
    """

    kind: str  # "latest", "all" or "specific"
    count: int = 0  # latest: how many
    versions: frozenset[int] = frozenset()  # specific: which

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, sorted(self.versions)))
        return "all"

    def candidates(self, versions: Iterable[int]) -> list[int]:
        """The versions the policy may keep, highest first (``latest`` takes the first N
        that load, so a broken highest version leaves the next one in its place)."""
        ordered = sorted(versions, reverse=True)
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered

    @property
    def limit(self) -> int | None:
        """How many versions of one model the policy keeps at most (None: no limit)."""
        return self.count if self.kind == "latest" else None


DEFAULT_VERSION_POLICY = VersionPolicy("latest", count=1)
_POSITIVE_RE = re.compile(r"[1-9][0-9]*\Z")


def parse_version_policy(raw: str) -> VersionPolicy:
    """``latest:N`` (N >= 1; ``latest`` alone is ``latest:1``), ``all``, ``specific:V1,V2,...``."""
    text = raw.strip()
    kind, sep, arg = text.partition(":")
    kind = kind.strip().lower()
    arg = arg.strip()
    if kind == "all" and not sep:
        return VersionPolicy("all")
    if kind == "latest" and not sep:
        return DEFAULT_VERSION_POLICY
    if kind == "latest" and _POSITIVE_RE.match(arg):
        return VersionPolicy("latest", count=int(arg))
    if kind == "specific" and sep:
        items = [item.strip() for item in arg.split(",")]
        if items and all(_POSITIVE_RE.match(item) for item in items):
            versions = [int(item) for item in items]
            if len(set(versions)) != len(versions):
                raise ConfigError(f"GAN_VERSION_POLICY lists a version twice: {raw!r}")
            return VersionPolicy("specific", versions=frozenset(versions))
    raise ConfigError(
        "GAN_VERSION_POLICY must be latest:N (N >= 1), all, or specific:V1,V2,... "
        f"(positive version numbers), got {raw!r}"
    )


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
    version_policy: VersionPolicy
    version_cache: int  # versions outside the policy loaded on demand, at most, per worker
    access_log: bool
    batching: bool  # run a request's samples as one batch where that is proven byte-identical
    keepalive: int  # seconds an idle connection stays open; 0 closes after each response
    client_timeout: int  # seconds a client has to send a whole request (and to read a response)
    metrics_dir: Path | None = None  # Prometheus multiprocess files; None: a fresh one per start
    log_format: str = "json"  # access lines: "json" (one object per line) or gunicorn's "text"
    show_paths: bool = False  # local paths of model.json's training record in /models/<name>
    # Bearer tokens any of which a request needs (empty: auth off); never in a repr or a log.
    api_tokens: tuple[str, ...] = field(default=(), repr=False)
    auth_exempt: frozenset[str] = parse_exempt(DEFAULT_EXEMPT)  # route groups open without one
    rate_limit: RateLimit | None = None  # a token bucket per client; None: no limit
    trusted_proxy_hops: int = 0  # proxies whose X-Forwarded-For entry names the client
    # onnxruntime execution providers, in order of preference; the CPU one always last.
    providers: tuple[str, ...] = ("CPUExecutionProvider",)


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

    def switch(name: str, default: str) -> bool:
        raw = env.get(name, default).strip().lower()
        if raw not in SWITCHES:
            raise ConfigError(f"{name} must be on or off, got {env.get(name)!r}")
        return SWITCHES[raw]

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

    log_format = text("GAN_LOG_FORMAT", "json").lower()
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"GAN_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    raw_metrics_dir = env.get("GAN_METRICS_DIR")
    metrics_dir = None if raw_metrics_dir is None else Path(text("GAN_METRICS_DIR", ""))

    raw_policy = env.get("GAN_VERSION_POLICY")
    policy = DEFAULT_VERSION_POLICY if raw_policy is None else parse_version_policy(raw_policy)
    check_no_debug(env)
    api_tokens, auth_exempt, rate_limit, proxy_hops = security_settings(env)

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
        version_policy=policy,
        version_cache=integer("GAN_VERSION_CACHE", 2, 0),
        access_log=switch("GAN_ACCESS_LOG", "on"),
        batching=switch("GAN_BATCHING", "on"),
        keepalive=integer("GAN_KEEPALIVE", 5, 0),
        client_timeout=integer("GAN_CLIENT_TIMEOUT", 10, 1),
        metrics_dir=metrics_dir,
        log_format=log_format,
        show_paths=switch("GAN_SHOW_PATHS", "off"),
        api_tokens=api_tokens,
        auth_exempt=auth_exempt,
        rate_limit=rate_limit,
        trusted_proxy_hops=proxy_hops,
        providers=parse_providers(env.get("GAN_PROVIDERS", "cpu")),
    )


def parse_providers(raw: str) -> tuple[str, ...]:
    """``GAN_PROVIDERS``: execution providers by preference, such as ``cuda,cpu``.

    Short names (cpu, cuda, tensorrt, rocm, openvino, dnnl) or onnxruntime's full names. The
    CPU provider is added last when missing: onnxruntime runs there what the others cannot.
    Whether a provider is installed is checked by each worker when it starts (the master
    never imports onnxruntime).
    """
    names = [item.strip() for item in raw.split(",")]
    if not raw.strip() or any(not name for name in names):
        raise ConfigError(f"GAN_PROVIDERS must be a comma-separated list of providers, got {raw!r}")
    providers: list[str] = []
    for name in names:
        full = PROVIDER_ALIASES.get(name.lower(), name)
        if not _PROVIDER_RE.match(full):
            raise ConfigError(
                f"GAN_PROVIDERS: unknown provider {name!r}; use {', '.join(PROVIDER_ALIASES)} "
                "or an onnxruntime name such as CUDAExecutionProvider"
            )
        if full in providers:
            raise ConfigError(f"GAN_PROVIDERS names {full} twice: {raw!r}")
        providers.append(full)
    if "CPUExecutionProvider" not in providers:
        providers.append("CPUExecutionProvider")
    elif providers[-1] != "CPUExecutionProvider":
        raise ConfigError(
            f"GAN_PROVIDERS: cpu must come last (onnxruntime would never use what follows it): {raw!r}"
        )
    return tuple(providers)


def check_no_debug(env: Mapping[str, str]) -> None:
    """Refuse FLASK_DEBUG: Flask's debug mode, and under ``flask run`` the Werkzeug debugger,
    which runs code sent to it, are never on in this service."""
    raw = env.get("FLASK_DEBUG")
    if raw and raw.strip().lower() not in ("0", "false", "no"):
        raise ConfigError(
            f"FLASK_DEBUG={raw} (or flask --debug) would turn on Flask's debug mode and with "
            "flask run the Werkzeug debugger, which runs code sent to it; the service never "
            "runs in debug mode: unset FLASK_DEBUG, drop --debug"
        )


def security_settings(
    env: Mapping[str, str],
) -> tuple[tuple[str, ...], frozenset[str], RateLimit | None, int]:
    """GAN_API_TOKEN or GAN_API_TOKEN_FILE, GAN_AUTH_EXEMPT, GAN_RATE_LIMIT and
    GAN_TRUSTED_PROXY_HOPS; no message names a token."""
    raw_tokens, token_file = env.get("GAN_API_TOKEN"), env.get("GAN_API_TOKEN_FILE")
    try:
        if raw_tokens is not None and token_file is not None:
            raise ValueError("set GAN_API_TOKEN or GAN_API_TOKEN_FILE, not both")
        tokens: tuple[str, ...] = ()
        if raw_tokens is not None:
            tokens = tokens_from_variable(raw_tokens)
        elif token_file is not None:
            if not token_file.strip():
                raise ValueError("GAN_API_TOKEN_FILE must not be empty")
            tokens = load_token_file(Path(token_file.strip()))
        exempt = parse_exempt(env.get("GAN_AUTH_EXEMPT", DEFAULT_EXEMPT))
        rate_limit = parse_rate_limit(env.get("GAN_RATE_LIMIT", "off"))
        hops = parse_proxy_hops(env.get("GAN_TRUSTED_PROXY_HOPS", "0"))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return tokens, exempt, rate_limit, hops
