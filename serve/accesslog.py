"""gunicorn's logger with access lines as JSON objects, one per request (GAN_LOG_FORMAT=json).

gunicorn loads this class in the master (``logger_class`` in serve/gunicorn.conf.py), so it
imports nothing heavy. The worker calls ``access`` after each response; what the app knows about
the request (its id, model, version, images) comes from the WSGI environ (serve.instrument).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from gunicorn.glogging import Logger

# The environ keys of serve.instrument, repeated so the master need not import Flask for them.
_REQUEST_ID, _MODEL, _VERSION, _IMAGES = "gan.request_id", "gan.model", "gan.version", "gan.images"


class JsonAccessLogger(Logger):
    """One JSON object per access line; the error log stays gunicorn's."""

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: timedelta) -> None:
        if not self.access_log_enabled:
            return
        try:
            self.access_log.info(access_line(resp, environ, request_time))
        except Exception:
            self.exception("cannot write an access line")


def access_line(resp: Any, environ: dict[str, Any], request_time: timedelta) -> str:
    """The JSON access line of one response."""
    return json.dumps(
        {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "request_id": environ.get(_REQUEST_ID),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "query": environ.get("QUERY_STRING") or None,
            "status": resp.status_code,
            "latency_ms": round(request_time.total_seconds() * 1000, 3),
            "model": environ.get(_MODEL),
            "version": environ.get(_VERSION),
            "images": environ.get(_IMAGES, 0),
            "bytes": resp.sent,
            "remote": environ.get("REMOTE_ADDR"),
            "pid": os.getpid(),
        },
        separators=(",", ":"),
    )
