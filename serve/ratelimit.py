"""An optional rate limit per client: a token bucket for each, shared by every gunicorn worker.

``GAN_RATE_LIMIT=RATE/UNIT[,BURST]`` (``10/s``, ``600/m,20``): each client may make BURST
requests at once and RATE per UNIT after that. A client is its token when auth is on, else its
address (the connection's, or with ``GAN_TRUSTED_PROXY_HOPS=N`` the one N proxies put into
``X-Forwarded-For``).

The buckets live in a fixed table of :data:`SLOTS` slots in a file in the metrics directory
(``PROMETHEUS_MULTIPROC_DIR``, set by the gunicorn master), memory-mapped by every worker and
updated under an ``fcntl`` lock, so the limit is the service's, not each worker's; without that
directory (``flask run``, the test client) the table is this process's own. A client is hashed
to a set of :data:`WAYS` slots; when all of them hold other clients, the least recently seen one
loses its bucket, which only ever makes the limit more lenient for it (it starts again with a
full bucket), never stricter for anyone. Memory is the same whatever the number of clients.

This module must not import prometheus_client (serve.config imports it in the gunicorn master,
before the metrics directory is set) nor onnxruntime.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import re
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set by the gunicorn master (serve/gunicorn.conf.py)
TABLE_FILE = "ratelimit.table"
WAYS = 8  # slots per set: a client's bucket is in one of the 8 slots of its set
SLOTS = 8192  # 8192 x 32 bytes = 256 KiB, whatever the number of clients
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
UNIT_NAMES = {"s": "second", "m": "minute", "h": "hour"}
_LIMIT_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)/([smh])(?:,([0-9]+))?\Z")
_MAGIC = b"GANRL001"
# Header: magic, the owner (the gunicorn master's pid), rate and burst (a change resets the table).
_HEADER = struct.Struct("<8sqdq")
_HEADER_SIZE = 64
_SLOT = struct.Struct("<16sdd")  # client key (a hash), tokens left, when they were counted
_SET = struct.Struct("<" + "16sdd" * WAYS)
_EMPTY = bytes(16)


@dataclass(frozen=True)
class RateLimit:
    """A token bucket's parameters: ``rate`` requests per second, ``burst`` at once."""

    count: float  # requests per unit, as configured
    unit: str  # "s", "m" or "h"
    burst: int

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.count / UNITS[self.unit]

    def __str__(self) -> str:
        count = int(self.count) if self.count.is_integer() else self.count
        return f"{count} requests per {UNIT_NAMES[self.unit]} (burst {self.burst})"


def parse_rate_limit(raw: str) -> RateLimit | None:
    """``off``, or ``RATE/UNIT[,BURST]``: RATE > 0 per s, m or h; BURST an integer >= 1,
    by default one second's worth of requests (at least 1)."""
    text = raw.strip().lower().replace(" ", "")
    if text == "off":
        return None
    found = _LIMIT_RE.match(text)
    if found is None or float(found.group(1)) <= 0 or (found.group(3) and int(found.group(3)) < 1):
        raise ValueError(
            "GAN_RATE_LIMIT must be off or RATE/UNIT[,BURST]: RATE > 0 requests per s, m or h, "
            f"BURST an integer >= 1 (for example 10/s,20 or 600/m), got {raw!r}"
        )
    count, unit = float(found.group(1)), found.group(2)
    burst = int(found.group(3)) if found.group(3) else max(1, math.ceil(count / UNITS[unit]))
    return RateLimit(count, unit, burst)


def parse_proxy_hops(raw: str) -> int:
    """GAN_TRUSTED_PROXY_HOPS: how many proxies in front of the service add X-Forwarded-For."""
    text = raw.strip()
    if not text.isdigit() or not text.isascii() or int(text) > 16:
        raise ValueError(f"GAN_TRUSTED_PROXY_HOPS must be an integer from 0 to 16, got {raw!r}")
    return int(text)


def client_address(environ: Mapping[str, Any], hops: int) -> str:
    """The client's address: the connection's, or behind ``hops`` trusted proxies, the entry
    the farthest of them added to X-Forwarded-For (the ``hops``-th from the right).

    With too few entries (a request that did not pass every proxy) it is the connection's, as
    Werkzeug's ProxyFix does. Entries left of those are the client's own claims and ignored.
    """
    if hops:
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        if forwarded:
            entries = forwarded.split(",")
            if len(entries) >= hops:
                entry = entries[-hops].strip()
                if entry:
                    return entry
    return str(environ.get("REMOTE_ADDR") or "")


class BucketTable:
    """Token buckets in a fixed-size table, in a shared file or in this process's memory."""

    def __init__(self, limit: RateLimit, path: Path | None = None, owner: int = 0) -> None:
        """``path``: the shared file (created, or reset if it belongs to another ``owner`` or
        limit); None: an anonymous map, private to this process."""
        self.limit = limit
        self.path = path
        self._sets = SLOTS // WAYS
        size = _HEADER_SIZE + SLOTS * _SLOT.size
        self._thread_lock = threading.Lock()  # flock does not exclude threads sharing the fd
        self._fd = -1
        if path is None:
            self._map = mmap.mmap(-1, size)
            return
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            if os.fstat(self._fd).st_size != size:
                os.ftruncate(self._fd, size)
            self._map = mmap.mmap(self._fd, size)
            header = (_MAGIC, owner, limit.rate, limit.burst)
            if _HEADER.unpack_from(self._map, 0) != header:
                # Another service's table (a new master), another limit, or a new file: empty.
                self._map[:] = bytes(size)
                _HEADER.pack_into(self._map, 0, *header)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def take(self, key: bytes, now: float | None = None) -> int:
        """Take one request from ``key``'s bucket at time ``now`` (default: time.monotonic(),
        read under the lock, so times written by the workers only ever grow).

        0 when the request may go ahead, else the whole seconds (>= 1) until it could.
        """
        digest = hashlib.blake2b(key, digest_size=16).digest()
        if digest == _EMPTY:  # the empty slot's marker; as likely as a 2**-128 draw
            digest = b"\x01" * 16
        offset = _HEADER_SIZE + int.from_bytes(digest[:8], "little") % self._sets * _SET.size
        rate, burst = self.limit.rate, self.limit.burst
        with self._thread_lock:
            if self._fd >= 0:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                if now is None:
                    now = time.monotonic()
                fields = _SET.unpack_from(self._map, offset)
                way = empty = -1
                oldest = 0
                for i in range(WAYS):
                    slot_key = fields[3 * i]
                    if slot_key == digest:
                        way = i
                        break
                    if slot_key == _EMPTY:
                        empty = i if empty < 0 else empty
                    elif fields[3 * i + 2] < fields[3 * oldest + 2]:
                        oldest = i
                if way < 0:  # a new client: an empty slot, else the one seen longest ago
                    way, tokens = (empty if empty >= 0 else oldest), float(burst)
                else:
                    last = fields[3 * way + 2]
                    tokens = fields[3 * way + 1]
                    # A time ahead of now was written before a reboot: start afresh.
                    tokens = float(burst) if now < last else min(burst, tokens + (now - last) * rate)
                if tokens >= 1.0:
                    tokens -= 1.0
                    wait = 0
                else:
                    wait = max(1, math.ceil((1.0 - tokens) / rate))
                _SLOT.pack_into(self._map, offset + way * _SLOT.size, digest, tokens, now)
            finally:
                if self._fd >= 0:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
        return wait


class Limiter:
    """The rate limit of one worker: whose bucket a request takes from, and the table."""

    def __init__(self, limit: RateLimit, table: BucketTable, proxy_hops: int) -> None:
        self.limit = limit
        self.table = table
        self.proxy_hops = proxy_hops

    def address_key(self, environ: Mapping[str, Any]) -> bytes:
        """The bucket key of a request without a token: its client's address."""
        return b"addr:" + client_address(environ, self.proxy_hops).encode("latin-1", "replace")

    def check(self, key: bytes) -> int:
        """0 if the request of ``key`` may go ahead, else the seconds until it could."""
        return self.table.take(key)

    def describe(self) -> str:
        """The limit in words, for the 429's message."""
        return str(self.limit)


def open_limiter(limit: RateLimit | None, proxy_hops: int, environ: Mapping[str, str]) -> Limiter | None:
    """The worker's limiter: on the table shared through the metrics directory when gunicorn
    set one up (owned by the master, this process's parent), else a table of its own."""
    if limit is None:
        return None
    directory = environ.get(MULTIPROC_ENV)
    if directory:
        table = BucketTable(limit, Path(directory) / TABLE_FILE, owner=os.getppid())
    else:
        table = BucketTable(limit)
    return Limiter(limit, table, proxy_hops)
