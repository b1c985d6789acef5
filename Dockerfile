# The serving image: the Flask app under gunicorn on onnxruntime, plus the committed model
# repository. No torch and no training code. Build, run and override: docs/container.md.
FROM python:3.11-slim

# No .pyc writes at run time (the root file system may be read-only), unbuffered log lines,
# no onnxruntime telemetry (it would also try to store a device id under $HOME), and a pip
# that keeps no cache and does not nag during the build.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ORT_DISABLE_TELEMETRY=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# The serving dependencies alone, in their own layer: editing the code or the models reuses it.
COPY serve/requirements.txt serve/requirements.txt
RUN pip install --no-cache-dir -r serve/requirements.txt

# A fixed numeric UID/GID, so runAsNonRoot checks and volume permissions can rely on it.
RUN groupadd --gid 10001 gan \
 && useradd --no-log-init --uid 10001 --gid 10001 \
      --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin gan

# Code and models stay owned by root: the service can read them, not change them.
COPY serve/ serve/
COPY models/ models/

# Every GAN_* setting can be overridden with `docker run -e`; these two differ from the
# service's own defaults only in being explicit (models) and reachable from outside (bind).
ENV GAN_MODELS_DIR=/app/models \
    GAN_BIND=0.0.0.0:8000

USER 10001:10001
EXPOSE 8000

# Liveness without curl: ask /healthz on the port GAN_BIND names (loopback when bound to all).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as u; h, _, p = os.environ.get('GAN_BIND', '0.0.0.0:8000').rpartition(':'); h = '127.0.0.1' if h in ('', '0.0.0.0', '[::]') else h; u.urlopen(f'http://{h}:{p}/healthz', timeout=4)"]

# gunicorn is PID 1 (exec form, no shell): SIGTERM reaches it and it shuts down gracefully.
# Worker heartbeat files go to /dev/shm, the one tmpfs every container runtime mounts, so the
# image runs with a read-only root file system and no writable /tmp.
STOPSIGNAL SIGTERM
CMD ["gunicorn", "-c", "serve/gunicorn.conf.py", "--worker-tmp-dir", "/dev/shm"]
