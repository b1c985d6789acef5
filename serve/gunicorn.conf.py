"""gunicorn settings for the service: ``gunicorn -c serve/gunicorn.conf.py`` from the repository root.

Every value comes from a ``GAN_`` variable (see docs/serving.md); options given on the gunicorn
command line, such as ``--bind``, override this file.
"""

import gc
import os
import sys

from serve.config import REPLACEMENT_WORKER_ENV, ConfigError, check_cpu_budget, load_settings
from serve.repository import RepositoryError, validate_repository

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
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms %(p)s'


# --- Hooks ------------------------------------------------------------------------------
def on_starting(server):
    """Check the CPU budget and the model repository in the master, before any worker forks."""
    # Workers that fail at boot would otherwise only surface as a worker-boot error;
    # checking here stops the master with the real message and a non-zero exit.
    try:
        check_cpu_budget(server.cfg.workers, _settings.threads, _settings.cpus)
        specs = validate_repository(_settings.models_dir)
    except (ConfigError, RepositoryError) as e:
        server.log.error("cannot start: %s", e)
        sys.exit(1)
    served = ", ".join(f"{s.name}/{s.version}" for s in specs)
    server.log.info("model repository %s: %s", _settings.models_dir, served)
    share_with_workers()


def share_with_workers():
    """Import what every worker needs once, in the master, so forked workers share its pages."""
    # Flask, Werkzeug, Pillow and numpy are the same in every worker; imported here, their
    # code and objects are shared copy-on-write, and gc.freeze() keeps the collector from
    # writing to (and so copying) those objects' pages in each worker. onnxruntime is left to
    # the workers: importing it starts a thread, and a child forked beside that thread hangs
    # in onnxruntime's exit handlers.
    import flask  # noqa: F401
    import PIL.PngImagePlugin  # noqa: F401

    import serve.imaging  # noqa: F401
    import serve.openapi  # noqa: F401

    gc.freeze()


def post_fork(server, worker):
    """Let replacement workers skip bad versions: failing to boot would stop the whole service."""
    # Worker ages count spawns from 1; the first `workers` of them are the service's start.
    if worker.age > server.cfg.workers:
        os.environ[REPLACEMENT_WORKER_ENV] = "1"
