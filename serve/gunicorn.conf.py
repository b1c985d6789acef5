"""gunicorn settings for the service: ``gunicorn -c serve/gunicorn.conf.py`` from the repository root.

Every value comes from a ``GAN_`` variable (see docs/serving.md); options given on the gunicorn
command line, such as ``--bind``, override this file.
"""

import atexit
import gc
import os
import shutil
import sys
import tempfile
from pathlib import Path

from serve.config import REPLACEMENT_WORKER_ENV, ConfigError, check_cpu_budget, load_settings
from serve.repository import RepositoryError, check_repository

try:
    _settings = load_settings()
except ConfigError as _error:
    # gunicorn is still reading its config: say what is wrong and stop, without a traceback.
    print(f"Error: {_error}", file=sys.stderr, flush=True)
    sys.exit(1)

# --- Application -------------------------------------------------------------------------
# The factory runs in each worker after fork, so each worker builds its own onnxruntime
# sessions; preloading the app would create them in the master, where thread pools cannot fork.
wsgi_app = "serve.app:create_app()"
preload_app = False

# --- Server socket and processes ---------------------------------------------------------
bind = [_settings.bind]
workers = _settings.workers
# Inference is CPU-bound: one request at a time per worker, but connections are multiplexed
# and each request is buffered whole first, so slow clients never hold a worker.
worker_class = "serve.worker.EventWorker"
worker_connections = 1000  # open connections per worker, idle keep-alive ones included
keepalive = _settings.keepalive
timeout = _settings.timeout
graceful_timeout = _settings.graceful_timeout
# gunicorn's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl), which
# two instances on a host would fight over and a read-only container home cannot hold.
control_socket_disable = True

# --- Logging: access and error logs to stdout and stderr, as containers expect ------------
accesslog = "-" if _settings.access_log else None
errorlog = "-"
loglevel = _settings.log_level
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms %(p)s'  # GAN_LOG_FORMAT=text
# GAN_LOG_FORMAT=json: one JSON object per access line (serve/accesslog.py); the error log and
# the text format are gunicorn's own.
if _settings.log_format == "json":
    logger_class = "serve.accesslog.JsonAccessLogger"

# --- Metrics: prometheus_client's multiprocess mode, one directory per service -------------
# Every worker writes its figures to memory-mapped files in this directory and a scrape of any
# worker sums them all. Set up (and emptied) in on_starting, before the workers fork, and kept
# on the arbiter (``server``): a HUP re-reads this file, so module globals would not survive it.
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


# --- Hooks ------------------------------------------------------------------------------
def on_starting(server):
    """Check the CPU budget and the model repository in the master, before any worker forks."""
    # Workers that fail at boot would otherwise only surface as a worker-boot error;
    # checking here stops the master with the real message and a non-zero exit. A bad
    # version beside good ones does not stop the start: it is logged, reported by /readyz,
    # and the others are served (the workers check it again, its session included).
    try:
        check_cpu_budget(server.cfg.workers, _settings.threads, _settings.cpus)
        specs, problems = check_repository(_settings.models_dir)
    except (ConfigError, RepositoryError) as e:
        server.log.error("cannot start: %s", e)
        sys.exit(1)
    for problem in problems:
        server.log.error("not serving a model version, serving the others: %s", problem)
    servable = ", ".join(f"{s.name}/{s.version}" for s in specs)
    server.log.info("model repository %s: %s", _settings.models_dir, servable)
    try:
        metrics_dir, fresh = prepare_metrics_dir(_settings.metrics_dir)
    except OSError as e:
        server.log.error(
            "cannot start: no directory for the metrics (GAN_METRICS_DIR): %s; set "
            "GAN_METRICS_DIR to a writable directory, ideally a tmpfs such as /dev/shm", e
        )
        sys.exit(1)
    # prometheus_client picks its multiprocess mode from this variable when first imported:
    # set before share_with_workers imports it, and inherited by every worker.
    os.environ[METRICS_ENV] = str(metrics_dir)
    server.gan_metrics_dir = metrics_dir
    if fresh:  # created by this master: removed when it exits. Not in on_exit: gunicorn skips
        # that hook when two workers fail to boot at once (the second failure aborts its halt).
        atexit.register(_remove_metrics_dir, metrics_dir, os.getpid())
    server.log.info("metrics in %s", metrics_dir)
    share_with_workers()


def prepare_metrics_dir(configured):
    """The metrics directory, emptied of earlier metrics files; a fresh one if not configured.

    The default is a new directory on the /dev/shm tmpfs (every container runtime mounts one,
    so a read-only root file system works), or in the system's temporary directory where
    there is no writable /dev/shm.
    """
    if configured is None:
        shm = "/dev/shm"
        base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None
        return Path(tempfile.mkdtemp(prefix="gan-metrics-", dir=base)), True
    path = configured.resolve()
    path.mkdir(parents=True, exist_ok=True)
    # Only prometheus_client's own files (counter_<pid>.db, ...): the figures of an earlier
    # run, whose pids a new worker could reuse. Anything else in the directory is left alone.
    for stale in path.glob("*.db"):
        stale.unlink()
    with tempfile.TemporaryFile(dir=path):  # writable: the workers create their files here
        pass
    return path, False


def share_with_workers():
    """Import what every worker needs once, in the master, so forked workers share its pages."""
    # Flask, Werkzeug, Pillow and numpy are the same in every worker; imported here, their
    # code and objects are shared copy-on-write, and gc.freeze() keeps the collector from
    # writing to (and so copying) those objects' pages in each worker. onnxruntime is left to
    # the workers: importing it starts a thread, and a child forked beside that thread hangs
    # in onnxruntime's exit handlers.
    import flask  # noqa: F401
    import PIL.PngImagePlugin  # noqa: F401
    import prometheus_client.exposition  # noqa: F401
    import prometheus_client.multiprocess  # noqa: F401

    import serve.imaging  # noqa: F401
    import serve.openapi  # noqa: F401

    gc.freeze()


def post_fork(server, worker):
    """Let replacement workers skip bad versions: failing to boot would stop the whole service."""
    # Worker ages count spawns from 1; the first `workers` of them are the service's start.
    if worker.age > server.cfg.workers:
        os.environ[REPLACEMENT_WORKER_ENV] = "1"


def child_exit(server, worker):
    """Drop a dead worker's live gauges (gan_model_versions_loaded) from the metrics."""
    # Its counters and histograms stay: what it served still counts in the totals.
    metrics_dir = getattr(server, "gan_metrics_dir", None)
    if metrics_dir is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, str(metrics_dir))


def _remove_metrics_dir(path, master_pid):
    """Remove the metrics directory this master created (at its exit, not its workers')."""
    if os.getpid() == master_pid:
        shutil.rmtree(path, ignore_errors=True)
